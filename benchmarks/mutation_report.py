"""The mutation score of the last `mutmut run`, and its survivors sorted into the kinds of
change that cannot alter a result on this machine (docs/development.md, "Test strength").

    python benchmarks/mutation_report.py [--root DIR]   # DIR: where `mutmut run` ran

A survivor is counted as "cannot change a result here" only when its diff matches one of the
patterns below (each says why); every other survivor is listed as a gap in the tests.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (kind, why, a regex on the mutated line): matched against mutmut's "+" line only
NO_EFFECT_HERE = [
    ("device", "a device argument: this machine has the CPU only", r"device=None|\.to\(None\)"),
    (
        "zip strict",
        "zip(strict=...) of sequences of equal length",
        r"strict=(None|False)|zip\([^)]*, \)",
    ),
    ("nan spelling", 'float("NAN") is float("nan")', r'float\("NAN"\)'),
    (
        "dtype",
        "a state's dtype (float64 sums, int64 counts) within the tests' magnitudes",
        r"dtype=None",
    ),
    (
        "unused default",
        "a default no caller uses (an interface's epoch/step)",
        r"(epoch|step): int = 1",
    ),
]


def _mutmut(*args: str, root: Path) -> str:
    command = [sys.executable, "-m", "mutmut", *args]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, check=True).stdout


def _functions(path: Path) -> dict[str, str]:
    """Every function of a file mutmut wrote (its variants included), by name."""
    text = path.read_text()
    lines = text.splitlines()
    return {
        node.name: "\n".join(lines[node.lineno - 1 : node.end_lineno])
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def added_lines(name: str, root: Path, cache: dict[Path, dict[str, str]]) -> list[str]:
    """The lines a mutant adds to its function, as `mutmut show` prints them (one parse
    per file instead of one mutmut process per mutant)."""
    module, _, function = name.rpartition(".")
    path = root / "mutants" / "src" / Path(*module.split(".")).with_suffix(".py")
    functions = cache.setdefault(path, _functions(path))
    orig = function.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
    original = functions[orig].splitlines()
    mutated = functions[function].replace(function, orig, 1).splitlines()
    diff = difflib.unified_diff(original, mutated, lineterm="", n=0)
    return [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".")
    root = Path(parser.parse_args().root)
    status = dict(
        line.strip().rsplit(": ", 1)
        for line in _mutmut("results", "--all", "true", root=root).splitlines()
        if ": " in line
    )
    counts = Counter(status.values())
    total = len(status)
    print(
        f"{total} mutants: {counts['killed']} killed ({100 * counts['killed'] / total:.1f} %), "
        f"{counts['survived']} survived, {counts['no tests']} without a test, "
        f"{counts['timeout']} timed out, {counts['not checked']} not checked"
    )
    kinds: Counter[str] = Counter()
    gaps: list[tuple[str, str]] = []
    cache: dict[Path, dict[str, str]] = {}
    for name in (n for n, s in status.items() if s == "survived"):
        added = added_lines(name, root, cache)
        kind = next(
            (k for k, _, rx in NO_EFFECT_HERE if any(re.search(rx, a) for a in added)), None
        )
        if kind:
            kinds[kind] += 1
        else:
            gaps.append((name, " | ".join(a.strip() for a in added)))
    for kind, why, _ in NO_EFFECT_HERE:
        print(f"  survived, cannot change a result here: {kinds[kind]:4d} {kind}: {why}")
    print(f"  survived, other (gaps in the tests or equivalent by reasoning): {len(gaps)}")
    effective = counts["killed"] / max(total - sum(kinds.values()), 1)
    print(f"killed among the mutants that can change a result here: {100 * effective:.1f} %")
    for name, diff in gaps:
        print(f"    {name}: {diff[:110]}")


if __name__ == "__main__":
    main()
