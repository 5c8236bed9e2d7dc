"""``--grid`` specifications (``compare``, and a study variant's ``grid``) -> override sets."""

from __future__ import annotations

from pathlib import Path

from mtlseg.errors import ConfigError


def grid_points(specs: list[str] | None, pairs: bool = False) -> list[tuple[str, ...]]:
    """``--grid`` -> the list of override sets to run.

    ``KEY=V1,V2,...`` per key (values split at top-level commas, so a quoted list value
    ``'model.params.channels=[8,16],[16,32]'`` is two values); several keys give their
    product, or with ``pairs`` their values side by side (every key lists as many). A single
    spec that is a path to a YAML file holding a list of mappings gives those combinations
    as they are (``[{tasks.0.weight: 0.1, tasks.hog.weight: 1.0}, ...]``)."""
    if not specs:
        return []
    if len(specs) == 1 and Path(specs[0]).suffix in (".yaml", ".yml") and Path(specs[0]).is_file():
        import yaml

        combos = yaml.safe_load(Path(specs[0]).read_text())
        if not isinstance(combos, list) or not all(isinstance(c, dict) and c for c in combos):
            raise ConfigError(f"{specs[0]}: --grid file must hold a list of KEY: VALUE mappings")
        return [tuple(f"{k}={_yaml_text(v)}" for k, v in c.items()) for c in combos]
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise ConfigError(
                f"--grid {spec!r}: expected KEY=V1,V2,... (e.g. tasks.hog.weight=0.1,1)"
            )
        axes.append([f"{key}={v}" for v in _split_top_level(values)])
    if pairs:
        lengths = {len(a) for a in axes}
        if len(lengths) > 1:
            raise ConfigError(
                f"--grid with --pairs: every key needs as many values, got {sorted(lengths)}"
            )
        return list(zip(*axes, strict=True))
    points: list[tuple[str, ...]] = [()]
    for axis in axes:
        points = [(*p, v) for p in points for v in axis]
    return points


def _yaml_text(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _split_top_level(text: str) -> list[str]:
    """``a,[b,c],d`` -> ``["a", "[b,c]", "d"]``: commas inside brackets or braces stay."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    if any(not p.strip() for p in parts):
        raise ConfigError(f"--grid value list {text!r} has an empty value")
    return [p.strip() for p in parts]
