"""train.loggers: CSV always, TensorBoard and MLflow by name; MLflow into a local store."""

from __future__ import annotations

import csv
import json

import pytest

from mtlseg.engine.train import train
from mtlseg.errors import ConfigError
from mtlseg.settings import load_config
from tests.conftest import TINY_UNET


def _cfg(data, *extra):
    return load_config("unet", [*TINY_UNET, f"data.path={data}", "train.val_every=2", *extra])


def _csv_column(out, key):
    with open(out / "logs" / "metrics.csv") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def test_mlflow_gets_the_metrics_the_csv_has_and_resume_continues_its_run(kvasir_small, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    out = tmp_path / "run"
    opts = ["train.loggers=[mlflow]", f"train.mlflow_uri={uri}", "train.log_every=1"]
    train(_cfg(kvasir_small, "train.max_steps=4", *opts), out)
    record = json.loads((out / "logs" / "mlflow.json").read_text())
    assert record["tracking_uri"] == uri
    assert not (out / "tb").exists()  # only the loggers asked for (and CSV, always)

    train(_cfg(kvasir_small, "train.max_steps=6", *opts), out, resume=True)
    assert json.loads((out / "logs" / "mlflow.json").read_text())["run_id"] == record["run_id"]
    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(record["run_id"])
    assert run.data.tags["recipe"] == "unet"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # resumed, not a second run
    for key in ("val/dice", "train/loss"):
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        expected = _csv_column(out, key)
        assert expected and set(expected) <= set(logged), key
        for step, value in expected.items():
            assert logged[step] == pytest.approx(value, rel=1e-6), (key, step)
    assert max(_csv_column(out, "val/dice")) == 5  # the resumed steps are in both


def test_unknown_logger_lists_the_known_ones(kvasir_small, tmp_path):
    with pytest.raises(ConfigError, match="unknown logger 'wandb'; valid loggers: csv, mlflow"):
        train(_cfg(kvasir_small, "train.max_steps=1", "train.loggers=[wandb]"), tmp_path / "r")
