"""The scores a comparison records of a checkpoint, on the validation split."""

from __future__ import annotations

from pathlib import Path

from mtlseg.engine.data import PreparedData
from mtlseg.engine.inference import evaluate, evaluate_cases, load_module


def score_checkpoint(ckpt: Path, data_path: str, data: PreparedData) -> dict[str, float]:
    """The validation split's scores of a checkpoint (``score_cases``' means)."""
    return score_cases(ckpt, data_path, data)[0]


def score_cases(
    ckpt: Path, data_path: str, data: PreparedData
) -> tuple[dict[str, float], list[dict]]:
    """The validation split's scores of a checkpoint, loaded once: segmentation per case at
    the data's own resolution (``evaluate_cases``: the means of the summary, and the rows),
    the auxiliary tasks' metrics and the pooled pixel scores at the training size
    (``evaluate``)."""
    module = load_module(ckpt)
    rows, summary = evaluate_cases(module, data_path, "val", progress=False)
    scores = {k: s["mean"] for k, s in summary["metrics"].items()}
    scores["num_cases"] = summary["num_cases"]
    sized = evaluate(module, data_path, "val", data=data)
    pooled = ("pixel_accuracy", "f1/mean", "weighted_iou")
    scores.update({k: v for k, v in sized.items() if k.startswith("task/") or k in pooled})
    return scores, rows
