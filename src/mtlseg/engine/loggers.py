"""Where a run's metrics go: ``train.loggers`` names Lightning loggers from this registry.

The CSV log is always kept (``logs/metrics.csv``: resume, plots and ``compare`` read it);
TensorBoard (``tb/``) and MLflow are added by name."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger

from mtlseg.config import RunConfig
from mtlseg.errors import ConfigError
from mtlseg.registry import Registry

LOGGERS: Registry[Callable[[RunConfig, Path], Logger]] = Registry("logger")
MLFLOW_RECORD = "logs/mlflow.json"  # the run's MLflow store and run id, so --resume continues it


@LOGGERS.register("csv")
def csv_logger(cfg: RunConfig, out: Path) -> Logger:
    return CSVLogger(out, name="logs", version="")


@LOGGERS.register("tensorboard")
def tensorboard_logger(cfg: RunConfig, out: Path) -> Logger:
    return TensorBoardLogger(out, name="tb", version="")


class ResumableMLFlowLogger(MLFlowLogger):
    """A resumed run keeps the parameters it was started with (MLflow refuses to change a
    logged one, e.g. a longer ``train.max_steps``); the run folder's config.yaml has the
    resumed config."""

    def __init__(self, *, resumed: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.resumed = resumed

    def log_hyperparams(self, params: Any) -> None:
        if not self.resumed:
            super().log_hyperparams(params)


def mlflow_uri(cfg: RunConfig) -> str:
    """``train.mlflow_uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's own default: a local
    SQLite store, ``mlflow.db`` in the working directory (``mlflow ui`` shows it)."""
    return cfg.train.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


@LOGGERS.register("mlflow")
def mlflow_logger(cfg: RunConfig, out: Path) -> Logger:
    """Lightning's MLFlowLogger (optional extra ``mlflow``); a resumed run logs into the MLflow
    run it started, whose id is kept in ``logs/mlflow.json``."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(
            "train.loggers: mlflow needs the mlflow extra: pip install 'mtlseg[mlflow]'"
        ) from None
    record = out / MLFLOW_RECORD
    saved = json.loads(record.read_text()) if record.is_file() else {}
    uri = saved.get("tracking_uri") or mlflow_uri(cfg)
    logger = ResumableMLFlowLogger(
        resumed=bool(saved),
        experiment_name=cfg.train.mlflow_experiment,
        run_name=f"{cfg.name}/{out.name}",
        tracking_uri=uri,
        tags={"recipe": cfg.name, "run_dir": str(out.resolve())},
        run_id=saved.get("run_id"),
    )
    run_id = logger.run_id  # None on the other processes of a DDP run: rank 0 logs
    if run_id is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"tracking_uri": uri, "run_id": run_id}) + "\n")
    return logger


def build_loggers(cfg: RunConfig, out: Path) -> list[Logger]:
    """CSV first and always, then the others ``train.loggers`` names, each once."""
    names = ["csv", *(n for n in cfg.train.loggers if n != "csv")]
    for name in names:
        LOGGERS.get(name)  # an unknown name lists the valid ones before anything is built
    return [LOGGERS.get(name)(cfg, out) for name in dict.fromkeys(names)]
