"""``mtlseg study run``: train and score only what a study still lacks, record each run.

A cell (variant, budget, seed) is done once one machine holds a record of it and of the
baseline at the same budget and seed, both made by the same code (the numerics key); a
machine that lacks the baseline of a missing cell trains it too. Cells run whole seed
groups first. Every cell is claimed before it trains (a lock file that the operating system
releases when its process dies, so a dead claim is taken over), which lets several
processes, or machines on one filesystem, run one study: no cell trains twice at once.

A run is recorded only when it finishes. ``max_minutes`` stops the study between runs, or
mid-run at the next training step (an ``interrupted.ckpt`` is written, as on Ctrl-C), and
the same machine resumes that run when it runs the study again. Run folders are kept per
machine and code (``WORK/<study>/<cell>/<machine>-<numerics>/``): a partial run made
elsewhere is never resumed here; this machine starts its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from filelock import FileLock, Timeout

from mtlseg.config import RunConfig
from mtlseg.engine.data import PreparedData, prepare_data
from mtlseg.engine.precision import resolve_precision
from mtlseg.engine.train import resume_checkpoint, train
from mtlseg.errors import MtlsegError
from mtlseg.metrics import protocol
from mtlseg.report.scores import score_cases
from mtlseg.study.curves import read_curves
from mtlseg.study.machine import Machine, code_version, numerics_key, this_machine
from mtlseg.study.plan import Probe, plan_lines
from mtlseg.study.spec import Cell, Study
from mtlseg.study.store import Record, Store

log = logging.getLogger(__name__)


class StudyDeadline(Exception):
    """Raised at the first training step after the study's time is up."""


class Deadline(pl.Callback):
    """Stops a run before a training step once ``at`` (``time.monotonic``) has passed; the
    trainer's exception checkpoint makes it resumable exactly."""

    def __init__(self, at: float) -> None:
        self.at = at

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
        if time.monotonic() >= self.at:
            raise StudyDeadline


@dataclass
class Done:
    """What one ``run_study`` call did."""

    trained: list[str] = field(default_factory=list)  # cells recorded, by description
    interrupted: str | None = None  # the cell stopped by the deadline
    stopped: str = "complete"  # complete | max-runs | max-minutes


def machine_for(cfg: RunConfig) -> tuple[Machine, str]:
    """This process's fingerprint and numerics key for a run of ``cfg``."""
    precision = resolve_precision(cfg.train.precision, cfg.train.accelerator)
    return this_machine(precision, cfg.train.accelerator), numerics_key(precision)


Where = Callable[[Cell], tuple[str, str, str | None]]  # a cell -> its ``Record.pairing`` here


def todo(study: Study, records: list[Record], where: Where) -> list[Cell]:
    """The cells this machine should train, in order: for every cell without a pair on any
    machine, its baseline (when this machine lacks it) and itself. A pair is a record of
    the cell and one of its baseline with the same ``Record.pairing`` (machine, numerics
    key, data)."""
    cells = study.cells()
    held: set[tuple] = set()
    groups: dict[tuple[str, str, str | None], set[str]] = {}
    for r in records:
        for c in cells:
            if c.holds(r):
                held.add((c.key, *r.pairing))
                groups.setdefault(r.pairing, set()).add(c.key)

    def here(cell: Cell) -> bool:
        return (cell.key, *where(cell)) in held

    def paired(cell: Cell) -> bool:
        keys = {cell.key, Cell(study.baseline, cell.budget, cell.seed).key}
        return any(keys <= held_here for held_here in groups.values())

    out: list[Cell] = []
    for cell in cells:
        if cell.variant is study.baseline:
            others = [
                c
                for c in cells
                if c.variant is not study.baseline
                and (c.budget, c.seed) == (cell.budget, cell.seed)
            ]
            alone = not others and not any(cell.key in g for g in groups.values())
            if (alone or any(not paired(c) for c in others)) and not here(cell):
                out.append(cell)
        elif not paired(cell) and not here(cell):
            out.append(cell)
    return out


def data_fingerprint(path: str) -> dict[str, Any]:
    """The data folder's file list and sizes, hashed: records of other data never pair
    (``Record.pairing``)."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    h = hashlib.sha256()
    total = 0
    for p in files:
        size = p.stat().st_size
        total += size
        h.update(f"{p.relative_to(root).as_posix()}\0{size}\0".encode())
    return {"path": str(root), "files": len(files), "bytes": total, "id": h.hexdigest()[:12]}


Layout = Callable[[Cell, str, str], Path]  # a cell, machine id, numerics key -> its run folder


def study_layout(work: Path, study: Study) -> Layout:
    """``WORK/<study>/<variant>/b<budget>-s<seed>-<cell>/<machine>-<numerics>/``."""
    return lambda cell, machine, numerics: work / study.name / cell.folder / f"{machine}-{numerics}"


class Lane:
    """One process's loop over the study: claim a cell, train it, score it, record it.

    ``layout`` puts each run's folder (``study_layout`` by default); ``split``: every run
    trains on this split (``compare``'s rows share one) instead of the one its data
    configuration gives."""

    def __init__(
        self,
        study: Study,
        store: Store,
        work: Path,
        deadline: float | None = None,
        take_run: Callable[[], bool] = lambda: True,
        say: Callable[[str], None] = print,
        layout: Layout | None = None,
        split: dict[str, list[str]] | None = None,
        claims: Path | None = None,
        announce: bool = True,
        probe: Probe | None = None,
    ) -> None:
        self.study, self.store = study, store
        self.announce, self.probe = announce, probe
        self.planned, self.started = 0, 0
        self.deadline, self.take_run, self.say = deadline, take_run, say
        self.layout = layout or study_layout(Path(work), study)
        self.split = split
        self.claims = claims or Path(work) / study.name / "claims"
        self._data: tuple[Any, PreparedData] | None = None
        self._data_id: str | None = None

    def run(self) -> Done:
        done = Done()
        self.claims.mkdir(parents=True, exist_ok=True)
        if self.announce:  # a lane of several has its plan said by the process that started it
            self.planned = self.say_plan()
        while True:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                done.stopped = "max-minutes"
                return done
            claimed = self._claim_next()
            if claimed is None:
                return done
            cell, lock = claimed
            try:
                if not self.take_run():
                    done.stopped = "max-runs"
                    return done
                if self._run(cell):
                    done.trained.append(cell.describe())
                else:
                    done.interrupted, done.stopped = cell.describe(), "max-minutes"
                    return done
            finally:
                lock.release()

    def say_plan(self, lanes: int = 1) -> int:
        """Say what this machine will train and about how long it takes; the run count."""
        cells = self._todo()
        machine = machine_for(cells[0].config)[0].id if cells else ""
        for line in plan_lines(cells, self.store.records(), machine, lanes, self.probe):
            self.say(line)
        return len(cells)

    def _claim_next(self) -> tuple[Cell, FileLock] | None:
        """The first cell still to do here that no other process holds, claimed."""
        for cell in self._todo():
            lock = FileLock(self.claims / f"{cell.key}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            if any(c.key == cell.key for c in self._todo()):  # not finished meanwhile
                return cell, lock
            lock.release()
        return None

    def _todo(self) -> list[Cell]:
        if self._data_id is None:
            self._data_id = data_fingerprint(self.study.data)["id"]
        data_id = self._data_id

        def where(cell: Cell) -> tuple[str, str, str | None]:
            machine, numerics = machine_for(cell.config)
            return machine.id, numerics, data_id

        return todo(self.study, self.store.records(), where)

    def _prepared(self, cfg: RunConfig) -> PreparedData:
        """The cell's data, read once for every cell that prepares it alike."""
        if self._data is None or self._data[0] != cfg.data:
            self._data = (cfg.data, prepare_data(cfg.data, split=self.split))
        return self._data[1]

    def prepared(self, data: PreparedData, cfg: RunConfig) -> None:
        """Data the caller has read already, for the cells whose data configuration is
        ``cfg.data``."""
        self._data = (cfg.data, data)

    def _run(self, cell: Cell) -> bool:
        """Train (or resume), score and record one cell; False when the deadline stopped it."""
        machine, numerics = machine_for(cell.config)
        cfg = _for_study(cell.config, machine.precision)
        run_dir = self.layout(cell, machine.id, numerics)
        resume = resume_checkpoint(run_dir) is not None
        self.started += 1
        count = f"run {self.started}/{self.planned}: " if self.announce else ""
        self.say(f"{count}{'resume' if resume else 'train'}: {cell.describe()} -> {run_dir}")
        data = self._prepared(cfg)
        callbacks = [Deadline(self.deadline)] if self.deadline is not None else []
        started, wall_file = time.monotonic(), run_dir / "wall_s"
        try:
            result = train(cfg, run_dir, resume=resume, data=data, callbacks=callbacks)
        except StudyDeadline:
            self.say(f"stopped (time is up): {cell.describe()}; the next study run resumes it")
            return False
        finally:
            earlier = float(wall_file.read_text()) if wall_file.is_file() else 0.0
            if run_dir.is_dir():
                wall_file.write_text(f"{earlier + time.monotonic() - started:.1f}")
        wall = float(wall_file.read_text())
        best_step = _step_of(result.best_checkpoint)
        scores = {"last": _scores(result.last_checkpoint, cfg, data)}
        if best_step == result.steps:  # the best checkpoint is the last one: scored once
            scores["best"] = {"summary": scores["last"]["summary"], "cases": "as last"}
        else:
            scores["best"] = _scores(result.best_checkpoint, cfg, data)
        record = Record(
            study=self.study.name,
            variant=cell.variant.name,
            cell=cell.key,
            budget=cell.budget,
            seed=cell.seed,
            config=cfg.to_dict(),
            machine={**asdict(machine), "id": machine.id},
            numerics=numerics,
            scores=scores,
            recipe=cell.variant.recipe,
            overrides=list(cell.variant.overrides),
            labelled=list(data.split.get("train", [])),
            pool=list(data.split.get("unlabelled", [])),
            code=code_version(),
            data=data_fingerprint(cfg.data.path),
            protocol=protocol(cfg.metrics.empty),
            best_step=best_step,
            curves=read_curves(run_dir / "logs" / "metrics.csv"),
            steps=result.steps,
            wall_s=wall,
            steps_per_s=result.steps / wall if wall > 0 else 0.0,
            finished=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        path = self.store.write(record, cell.folder)
        count = f"run {self.started}/{self.planned}: " if self.announce else ""
        self.say(f"{count}recorded: {cell.describe()}: Dice {record.dice():.4f} -> {path}")
        return True


def _for_study(cfg: RunConfig, precision: str) -> RunConfig:
    """A cell's configuration as it trains: its precision resolved (recorded), no bars."""
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, precision=precision, progress_bar=False)
    )


def _scores(ckpt: Path, cfg: RunConfig, data: PreparedData) -> dict[str, Any]:
    """The checkpoint's per-case scores at the data's own resolution on the val split, and
    the means of every metric (the auxiliary tasks' too)."""
    summary, rows = score_cases(ckpt, cfg.data.path, data)
    return {"summary": _rounded(summary), "cases": [_rounded(r) for r in rows]}


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    """Scores to 7 significant digits: more than a table shows, at half the size."""
    return {k: float(f"{v:.7g}") if isinstance(v, float) else v for k, v in row.items()}


def _step_of(ckpt: Path) -> int | None:
    import torch

    if not ckpt.is_file():
        return None
    return torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step")


class RunBudget:
    """At most ``n`` runs started by every lane of one ``study run``: a counter in a file,
    under a lock, that the lane processes share."""

    def __init__(self, path: Path) -> None:
        self.path, self.lock = path, FileLock(f"{path}.lock")

    @classmethod
    def create(cls, path: Path, n: int) -> RunBudget:
        path.write_text(str(n))
        return cls(path)

    def take(self) -> bool:
        with self.lock:
            left = int(self.path.read_text())
            if left <= 0:
                return False
            self.path.write_text(str(left - 1))
            return True

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        Path(f"{self.path}.lock").unlink(missing_ok=True)


def run_study(
    study: Study,
    store: Store,
    work: Path | str,
    max_minutes: float | None = None,
    max_runs: int | None = None,
    parallel: int = 1,
    say: Callable[[str], None] = print,
    lane_budget: Path | None = None,
    launcher: str = "local",
    launcher_options: dict[str, Any] | None = None,
) -> Done:
    """Run what ``study`` lacks in this process (``parallel`` 1), or in ``parallel`` lane
    processes of one thread each; stop at ``max_minutes`` or after ``max_runs`` runs.
    ``lane_budget``: the run counter of the ``study run`` that started this lane.

    ``launcher="submitit"``: the lanes are ``parallel`` jobs of a scheduler through submitit
    (SLURM where ``sbatch`` is found, else local processes; ``launcher_options`` go to the
    executor's ``update_parameters``, e.g. ``slurm_partition``), not a launcher of ours."""
    store.check_writable()
    work = Path(work)
    (work / study.name).mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 60 * max_minutes if max_minutes is not None else None
    if lane_budget is not None:
        lane = Lane(study, store, work, deadline, RunBudget(lane_budget).take, say, announce=False)
        return lane.run()
    budget = None
    if max_runs is not None:
        budget = RunBudget.create(work / study.name / f".runs-{os.getpid()}", max_runs)
    try:
        if launcher == "submitit":
            if budget is None:
                budget = RunBudget.create(work / study.name / f".runs-{os.getpid()}", 1 << 30)
            options = launcher_options or {}
            return _run_submitit(study, store, work, max_minutes, parallel, budget, say, options)
        if parallel <= 1:
            take = budget.take if budget else (lambda: True)
            return Lane(study, store, work, deadline, take, say).run()
        return _run_lanes(study, store, work, max_minutes, parallel, budget, say)
    finally:
        if budget is not None:
            budget.remove()


def _run_lanes(
    study: Study,
    store: Store,
    work: Path,
    max_minutes: float | None,
    parallel: int,
    budget: RunBudget | None,
    say: Callable[[str], None],
) -> Done:
    """``parallel`` processes of ``mtlseg study run`` with one thread each, sharing the
    claims and the run budget; their lines are passed on with a lane prefix."""
    if study.source is None:
        raise ValueError("parallel lanes need a study read from a file")
    command = [sys.executable, "-m", "mtlseg.cli", "study", "run", str(study.source)]
    command += ["--data", study.data, "--store", str(store.root), "--work", str(work)]
    if budget is None:
        budget = RunBudget.create(work / study.name / f".runs-{os.getpid()}", 1 << 30)
    command += ["--lane-budget", str(budget.path)]
    if max_minutes is not None:
        command += ["--max-minutes", str(max_minutes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done, talk = Done(), threading.Lock()
    planned, started = Lane(study, store, work, say=say).say_plan(parallel), [0]

    def relay(i: int, lane: subprocess.Popen) -> None:
        assert lane.stdout is not None
        for line in lane.stdout:
            with talk:
                count = ""
                if line.startswith(("train: ", "resume: ")):
                    started[0] += 1
                    count = f"run {started[0]}/{planned}: "
                say(f"lane {i}: {count}{line.rstrip()}")
                if line.startswith("recorded: "):
                    done.trained.append(line.split(": ", 2)[1])
                if line.startswith("stopped (time is up): "):
                    done.interrupted, done.stopped = line.split(": ", 1)[1].strip(), "max-minutes"

    lanes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(parallel)
    ]
    threads = [threading.Thread(target=relay, args=(i, p)) for i, p in enumerate(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = [lane.wait() for lane in lanes]
    if any(codes):
        raise MtlsegError(f"study lanes ended with exit codes {codes} (their lines are above)")
    return done


def lane_job(
    source: str, data: str, store: str, work: str, max_minutes: float | None, budget: str
) -> list[str]:
    """One scheduler job: a lane over the study file ``source`` (what submitit runs)."""
    import torch

    from mtlseg.study.spec import load_study

    torch.set_num_threads(1)
    study = load_study(source, data)
    done = run_study(
        study, Store(store, study.name), Path(work), max_minutes, lane_budget=Path(budget)
    )
    return done.trained


def _run_submitit(
    study: Study,
    store: Store,
    work: Path,
    max_minutes: float | None,
    parallel: int,
    budget: RunBudget,
    say: Callable[[str], None],
    options: dict[str, Any],
) -> Done:
    """``parallel`` lane jobs through submitit's AutoExecutor; waits for them all."""
    try:
        import submitit
    except ImportError:
        raise MtlsegError(
            "--launcher submitit needs submitit: pip install 'mtlseg[slurm]'"
        ) from None
    if study.source is None:
        raise ValueError("scheduler lanes need a study read from a file")
    folder = work / study.name / "submitit"
    cluster = options.pop("cluster", None)
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    timeout = int(max_minutes + 30) if max_minutes is not None else 24 * 60
    executor.update_parameters(
        name=f"mtlseg-{study.name}", timeout_min=timeout, cpus_per_task=1, **options
    )
    args = (str(study.source), study.data, str(store.root), str(work), max_minutes)
    jobs = [executor.submit(lane_job, *args, str(budget.path)) for _ in range(parallel)]
    say(
        f"submitted {len(jobs)} lane job(s) ({executor.cluster}): {', '.join(j.job_id for j in jobs)}"
    )
    done = Done()
    for job in jobs:
        try:
            trained = job.result()
        except Exception as err:  # a job's own error, with its log's path
            raise MtlsegError(f"lane job {job.job_id} failed ({folder}): {err}") from None
        done.trained += trained
        for cell in trained:
            say(f"job {job.job_id}: recorded {cell}")
    return done
