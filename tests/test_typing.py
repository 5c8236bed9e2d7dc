"""Type hints: every package of mtlseg keeps at least 90 % of its functions fully hinted
(every parameter but self/cls, and the return); mypy checks them in .ci/run."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import mtlseg

ROOT = Path(mtlseg.__file__).parent


def _fully_hinted(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    a = node.args
    params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(p for p in (a.vararg, a.kwarg) if p)]
    params = [p for p in params if p.arg not in ("self", "cls")]
    return node.returns is not None and all(p.annotation is not None for p in params)


def hint_shares() -> dict[str, float]:
    """{package: share of its functions fully hinted}; top-level modules count as one."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        package = parts[0] if len(parts) > 1 else "(top level)"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                counts[package][0] += _fully_hinted(node)
                counts[package][1] += 1
    return {p: ok / n for p, (ok, n) in counts.items()}


def test_the_counter_sees_a_missing_hint():
    tree = ast.parse("def f(a, b: int) -> int: ...\ndef g(self, a: int) -> None: ...")
    assert [_fully_hinted(n) for n in tree.body] == [False, True]


def test_every_package_is_at_least_90_percent_hinted():
    shares = hint_shares()
    assert {"engine", "tasks", "weighting", "models", "metrics"} <= set(shares)
    low = {p: round(s, 2) for p, s in shares.items() if s < 0.9}
    assert not low, f"packages below 90 % fully hinted functions: {low}"
