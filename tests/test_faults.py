"""Faults and precision: a hard kill mid-epoch resumes to the uninterrupted run's weights;
bf16 mixed precision trains on CPU; float16 autocast on CPU is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from mtlseg.engine.checkpoint import load_checkpoint
from mtlseg.engine.train import train
from mtlseg.errors import ConfigError
from mtlseg.settings import load_config
from tests.conftest import REPO, TINY_UNET

# 9 train images, batch 4: 2 steps per epoch; a checkpoint every 3 steps falls mid-epoch
EXACT = [
    *TINY_UNET,
    "train.val_every=3",
    "data.val_fraction=0.25",
    "train.scheduler=step",
    "train.warmup=0",
    "data.num_workers=0",
    "train.log_every=1",
]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _step(path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (OSError, RuntimeError, KeyError, EOFError):
        return -1


def _train_cli(data, out, steps: int, *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "mtlseg", "train", "--recipe", "unet", "--data", str(data)]
    return [*argv, "--out", str(out), *_sets([*EXACT, f"train.max_steps={steps}"]), *extra]


KILL_AT_STEP_4 = """
import os, signal, sys
from mtlseg.cli import main
from mtlseg.engine.module import MultiTaskModule
step = MultiTaskModule.training_step
def killed(self, batch, batch_idx):
    if self.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, batch, batch_idx)
MultiTaskModule.training_step = killed
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(kvasir_small, tmp_path):
    # every run is a process with the same environment (thread count changes float sums)
    steps = 30
    out = tmp_path / "killed"
    # the process SIGKILLs itself at step 4, after the checkpoint of step 3 (polling from
    # outside raced with training: a fast machine was already past the next checkpoint)
    argv = _train_cli(kvasir_small, out, steps)
    proc = subprocess.run([sys.executable, "-c", KILL_AT_STEP_4, *argv[3:]], cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, "the run was killed, not finished"
    last = out / "checkpoints" / "last.ckpt"
    killed_at = _step(last)
    assert 3 <= killed_at < steps and killed_at % 2 == 1, "a mid-epoch checkpoint"

    subprocess.run(_train_cli(kvasir_small, out, steps, "--resume"), cwd=REPO, check=True)
    resumed = load_checkpoint(last)
    assert resumed["global_step"] == steps
    whole = tmp_path / "whole"
    subprocess.run(_train_cli(kvasir_small, whole, steps), cwd=REPO, check=True)
    reference = load_checkpoint(whole / "checkpoints" / "last.ckpt")["state_dict"]
    for key, value in reference.items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_bf16_mixed_precision_trains_on_cpu(kvasir_small, tmp_path):
    """The first logged loss of a bf16-mixed run is the loss of the same model on the same
    first batch under CPU bf16 autocast, computed here by hand (and not the fp32 one)."""
    import lightning.pytorch as pl

    from mtlseg.engine.data import prepare_data, train_loader
    from mtlseg.engine.train import build_module

    losses = {}
    for precision in ("32", "bf16-mixed"):
        sets = [*EXACT, f"data.path={kvasir_small}", "train.max_steps=3"]
        cfg = load_config("unet", [*sets, f"train.precision={precision}"])
        result = train(cfg, tmp_path / precision)
        rows = (result.out_dir / "logs" / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        first = next(r.split(",") for r in rows[1:] if r.split(",")[header.index("train/loss")])
        losses[precision] = float(first[header.index("train/loss")])
        assert load_checkpoint(result.last_checkpoint)["global_step"] == 3
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)  # as train() does
    data = prepare_data(cfg.data)
    module = build_module(cfg, data).train()
    batch = next(iter(train_loader(data, cfg.train.batch_size, cfg.train.seed, 0)))
    with torch.no_grad():
        fp32 = float(module.train_step.losses(batch, 0).total)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = float(module.train_step.losses(batch, 0).total)
    assert losses["32"] == pytest.approx(fp32, abs=1e-5)
    assert losses["bf16-mixed"] == pytest.approx(bf16, abs=1e-5)
    assert bf16 != fp32


def test_a_gradient_aggregator_trains_under_bf16_mixed(kvasir_small, tmp_path):
    """The engine tells the aggregator its forward ran under autocast: torch's vmapped
    Jacobian through the UNet's norm layers would stop the run at its first step."""
    sets = [*EXACT, f"data.path={kvasir_small}", "train.max_steps=2", "weighting.kind=pcgrad"]
    cfg = load_config("unet-hog", [*sets, "train.precision=bf16-mixed"])
    result = train(cfg, tmp_path / "run")
    assert load_checkpoint(result.last_checkpoint)["global_step"] == 2
    rows = (result.out_dir / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    cosines = [r.split(",")[header.index("train/cos_segmentation-hog")] for r in rows[1:]]
    assert any(c not in ("", "nan") for c in cosines), "the aggregator saw the Jacobian"


def test_float16_autocast_needs_a_gpu(kvasir_small, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = load_config(
        "unet",
        [*TINY_UNET, f"data.path={kvasir_small}", "train.precision=16-mixed", "train.max_steps=1"],
    )
    with pytest.raises(ConfigError, match="16-mixed needs a GPU; on CPU use bf16-mixed"):
        train(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="train.precision: expected one of"):
        load_config("unet", ["train.precision=fp8"])


def test_two_process_ddp_on_cpu_shares_batches_syncs_metrics_and_writes_once(
    kvasir_small, tmp_path
):
    from mtlseg.engine.inference import evaluate

    out = tmp_path / "ddp"
    argv = ["train", "--recipe", "unet", "--data", str(kvasir_small), "--out", str(out)]
    argv += _sets(
        [
            *EXACT,
            "train.max_steps=4",
            "train.val_every=4",
            "train.devices=2",
            "train.accelerator=cpu",
        ]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mtlseg", *argv], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = load_checkpoint(out / "checkpoints" / "last.ckpt")
    # 9 train images, batch 4: 2 batches per epoch shared by 2 processes -> 1 step per epoch
    assert last["global_step"] == 4 and last["epoch"] >= 3
    rows = (out / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = [r.split(",")[header.index("val/dice")] for r in rows[1:]]
    logged = [float(v) for v in logged if v]
    assert len(logged) == 1, "one process logs"
    # the val Dice both processes computed and synced equals one process scoring it alone
    alone = evaluate(out / "checkpoints" / "last.ckpt", str(kvasir_small), "val")
    assert logged[0] == pytest.approx(alone["dice/mean"], abs=1e-5)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "logs",
        "splits.json",
        "tb",
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


SAVE_WEIGHTS_PER_PROCESS = """
import os, sys, torch
from mtlseg.cli import main
from mtlseg.engine.module import MultiTaskModule
def save(self):
    state = {k: v.clone() for k, v in self.state_dict().items() if torch.is_tensor(v)}
    torch.save(state, os.path.join(os.environ["WEIGHTS_OUT"], f"rank{self.global_rank}.pt"))
MultiTaskModule.on_train_end = save
sys.exit(main(sys.argv[1:]))
"""


# the first stage leaves the HOG head unused: DDP must look for unused parameters
STAGED = "train.stages=[{steps: 2, tasks: []}, {tasks: null}]"


@pytest.mark.parametrize(("kind", "extra"), [("famo", [STAGED]), ("pcgrad", [])])
def test_ddp_trains_both_weighting_families_to_the_same_weights_in_every_process(
    kind, extra, kvasir_small, tmp_path
):
    """FAMO steps parameters outside DDP's reducer (here with a stage that leaves a head
    unused); PCGrad switches the reducer off and averages the Jacobian itself: in both, the
    processes (fed different batches) must end with the same weights and buffers."""
    script = tmp_path / "train_and_save.py"
    script.write_text(SAVE_WEIGHTS_PER_PROCESS)
    out = tmp_path / "run"
    argv = [sys.executable, str(script), "train", "--recipe", "unet-hog"]
    argv += ["--data", str(kvasir_small), "--out", str(out)]
    argv += _sets([*EXACT, "train.max_steps=3", "train.val_every=3", "train.devices=2"])
    argv += _sets(["train.accelerator=cpu", f"weighting.kind={kind}", *extra])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WEIGHTS_OUT": str(tmp_path)}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best val Dice") == 1, "one process reports"
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), f"{kind}: {name} differs between processes"
    last = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3
    for name, value in ranks[0].items():  # what rank 0 saved is what they hold
        assert torch.equal(value, last["state_dict"][name]), name


def _toy_gradients(kind: str, batches) -> list[torch.Tensor]:
    """Gradients of a tiny two-task model over a few steps (SGD between them), as the engine
    makes them: the weighting's backward, then the mean of every .grad over the processes."""
    from torch import nn

    from mtlseg.distributed import average_over_processes
    from mtlseg.weighting import BackwardContext, build_weighting

    torch.manual_seed(0)
    trunk, head_a, head_b = nn.Linear(3, 6), nn.Linear(6, 1), nn.Linear(6, 2)
    params = {"update_weights_every": 2} if kind == "nash-mtl" else {}
    weighting = build_weighting(kind, params, {"a": 1.0, "b": 0.5}, "a")
    model = nn.ModuleList([trunk, head_a, head_b, weighting])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    seen = []
    for step, (x, ya, yb) in enumerate(batches):
        feature = torch.tanh(trunk(x))
        losses = {
            "a": (head_a(feature) - ya).pow(2).mean(),
            "b": (head_b(feature) - yb).pow(2).mean(),
        }
        optimizer.zero_grad()
        heads = [*head_a.parameters(), *head_b.parameters()]
        ctx = BackwardContext(list(trunk.parameters()), heads, {"bottleneck": feature})
        weighting.backward(losses, weighting(losses, step), ctx)
        average_over_processes([p.grad for p in model.parameters() if p.grad is not None])
        seen.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        optimizer.step()
    return seen


def _gradient_methods() -> list[str]:
    """Every registered weighting that reads gradients (and so syncs them itself)."""
    from mtlseg.weighting import WEIGHTINGS

    return [k for k in WEIGHTINGS.names() if WEIGHTINGS.get(k).syncs_gradients]


GRADIENT_METHODS = _gradient_methods()


def _gradients_in_process(rank: int, world: int, port: int, batches, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mine = [tuple(t.chunk(world)[rank] for t in batch) for batch in batches]
        torch.save({k: _toy_gradients(k, mine) for k in GRADIENT_METHODS}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradient_methods_under_ddp_update_with_the_whole_batch_gradients(tmp_path):
    """Each process holds half of every batch; the gradients every process ends a step with
    must be those one process computes on the whole batch (Jacobian, gradient norms and
    Nash-MTL's between-solves step included), not an average of per-process aggregates."""
    import torch.multiprocessing as mp

    generator = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(8, 3, generator=generator),
            torch.randn(8, 1, generator=generator),
            torch.randn(8, 2, generator=generator),
        )
        for _ in range(4)
    ]
    mp.spawn(_gradients_in_process, args=(2, _free_port(), batches, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for kind in GRADIENT_METHODS:
        alone = _toy_gradients(kind, batches)
        halves = [
            _toy_gradients(kind, [tuple(t.chunk(2)[r] for t in b) for b in batches])
            for r in range(2)
        ]
        assert not torch.allclose(halves[0][0], halves[1][0]), "the halves' own gradients differ"
        for seen in ranks:
            for got, want in zip(seen[kind], alone, strict=True):
                assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), kind
        assert torch.equal(ranks[0][kind][-1], ranks[1][kind][-1]), kind


LOSS_WEIGHTINGS_UNDER_DDP = {
    "dwa": {"unit": "step", "every": 2},
    "softadapt": {"unit": "step", "every": 2},
    "famo": {},
}


def _weights_seen(kind: str, steps: list[dict[str, float]]) -> list[dict[str, float]]:
    from mtlseg.weighting import build_weighting

    weighting = build_weighting(
        kind, LOSS_WEIGHTINGS_UNDER_DDP[kind], {"segmentation": 1.0, "hog": 0.5}, "segmentation"
    )
    weighting.train()
    seen = []
    for step, losses in enumerate(steps):
        w = weighting.weights({n: torch.tensor(v) for n, v in losses.items()}, step)
        seen.append({n: float(v) for n, v in w.items()})
    return seen


def _weights_in_process(rank: int, world: int, port: int, losses, out: str) -> None:
    """One DDP process (gloo): every loss weighting's weights on this process's losses."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        seen = {
            k: _weights_seen(k, [step[rank] for step in losses]) for k in LOSS_WEIGHTINGS_UNDER_DDP
        }
        torch.save(seen, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_loss_weightings_keep_one_state_across_ddp_processes(tmp_path):
    """Each process sees its own batch's losses; the weights must be those one process
    computes from the losses of the whole batch (their mean), equal in every process."""
    import torch.multiprocessing as mp

    generator = torch.Generator().manual_seed(0)
    losses = [
        [
            {n: float(torch.rand((), generator=generator)) + 0.1 for n in ("segmentation", "hog")}
            for _rank in range(2)
        ]
        for _step in range(8)
    ]
    mp.spawn(_weights_in_process, args=(2, _free_port(), losses, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for kind in LOSS_WEIGHTINGS_UNDER_DDP:
        mean = [{n: (s[0][n] + s[1][n]) / 2 for n in s[0]} for s in losses]
        alone = _weights_seen(kind, mean)
        per_rank = [_weights_seen(kind, [s[r] for s in losses]) for r in range(2)]
        assert per_rank[0] != per_rank[1], f"{kind}: the processes' own losses differ"
        for seen in ranks:
            for got, want in zip(seen[kind], alone, strict=True):
                assert got == pytest.approx(want, rel=1e-5), kind
        assert alone[-1] != alone[0], f"{kind}: the weights moved"


def test_resumable_batches_share_an_epoch_between_processes_and_skip(monkeypatch):
    from torch.utils.data import BatchSampler

    from mtlseg.engine.data import EpochShuffleSampler, ResumableBatches

    def epoch(rank: int, world: int, skip: int = 0) -> list[list[int]]:
        monkeypatch.setattr(ResumableBatches, "_world", staticmethod(lambda: (rank, world)))
        batches = ResumableBatches(BatchSampler(EpochShuffleSampler(23, seed=1), 4, True))
        batches.set_epoch(3)
        batches.skip_next(skip)
        return list(batches)

    alone = epoch(0, 1)
    first, second = epoch(0, 2), epoch(1, 2)
    assert len(alone) == 5 and len(first) == len(second) == 2, "cut to a multiple of 2"
    assert first == alone[0:4:2] and second == alone[1:4:2], "distinct, from one order"
    assert not {i for b in first for i in b} & {i for b in second for i in b}
    assert epoch(1, 2, skip=1) == second[1:], "a resumed process skips what it trained on"


def test_patient_pair_batches_are_shared_between_processes_whole(monkeypatch):
    """Under DDP a process takes whole patient-pair batches of the one (seed, epoch) order:
    distinct between processes, the pairs (and one patient per batch) intact."""
    from mtlseg.data.samplers import AdjacentPairBatchSampler
    from mtlseg.engine.data import ResumableBatches

    meta = [
        {"case_id": f"p{p}_f{f}", "patient_id": f"p{p}", "slice_index": z}
        for p in range(4)
        for f in range(2)
        for z in range(6)
    ]

    def epoch(rank: int, world: int) -> list[list[int]]:
        monkeypatch.setattr(ResumableBatches, "_world", staticmethod(lambda: (rank, world)))
        batches = ResumableBatches(AdjacentPairBatchSampler(meta, 4, seed=2))
        batches.set_epoch(1)
        return list(batches)

    alone, first, second = epoch(0, 1), epoch(0, 2), epoch(1, 2)
    assert first == alone[0::2][: len(first)] and second == alone[1::2][: len(second)]
    assert len(first) == len(second) == len(alone) // 2
    assert not {i for b in first for i in b} & {i for b in second for i in b}
    for batch in first + second:
        assert len({meta[i]["patient_id"] for i in batch}) == 1, "one patient per batch"
        pairs = [sorted(batch[i : i + 2]) for i in range(0, len(batch), 2)]
        assert all(b - a == 1 for a, b in pairs), "adjacent slices stay together"
