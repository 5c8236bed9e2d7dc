"""``train.precision: auto``: the fastest precision that is as accurate, decided per machine.

On a GPU: ``bf16-mixed`` where it computes bf16 natively, else ``16-mixed`` (float16 with
loss scaling). On a CPU: ``bf16-mixed`` only where the CPU computes bf16 natively
(AVX512-BF16 or AMX, read from its flags) and a short micro-benchmark of a convolutional
training step finds it faster than fp32; otherwise fp32. Without native bf16 the CPU
emulates it, many times slower (measured here: see docs/archive.md, "Precision"). The
micro-benchmark's answer is cached per CPU model, flags, thread count and torch version, so
a run pays for it once per machine. Whether bf16 is *as accurate* is not decided here but by
``benchmarks/precision.py`` (Dice after the same steps, 3 seeds each); its finding is stated
in the docs, and ``auto`` keeps fp32 when it is not met (``BF16_ACCURATE``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from mtlseg.errors import ConfigError

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# benchmarks/precision.py's accuracy finding for bf16-mixed against fp32 (docs/archive.md,
# "Precision"): on an AMX Xeon, `unet` 64 px, 500 steps, 3 seeds: per-volume Dice 0.718 +- 0.035
# bf16 vs 0.716 +- 0.037 fp32, paired +0.003 +- 0.004 (inside the noise, every seed within 0.006)
BF16_ACCURATE = True
# set to "32" or "bf16-mixed" to fix what `auto` resolves to on a CPU, whatever the machine
# (the test suite pins "32", so its golden values do not depend on the CPU it runs on)
AUTO_ENV = "MTLSEG_AUTO_PRECISION"
AUTO_CHOICES = ("32", "bf16-mixed")
# bf16 must be at least this much faster per step to be chosen
MIN_SPEEDUP = 1.15


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_native_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def cache_file() -> Path:
    root = os.environ.get("MTLSEG_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(root or Path.home() / ".cache") / "mtlseg" / "precision.json"


def machine_key() -> str:
    """What the micro-benchmark's answer depends on: CPU model, flags, threads, torch."""
    flags = ",".join(sorted(cpu_flags()))
    text = f"{cpu_model()}|{hashlib.sha1(flags.encode()).hexdigest()[:12]}|"
    return text + f"threads={torch.get_num_threads()}|torch={torch.__version__}"


def step_time(dtype: torch.dtype | None, size: int = 64, steps: int = 4) -> float:
    """Median seconds of a small conv net's training step (fwd + bwd + SGD) on random data,
    under CPU autocast to ``dtype`` (None: fp32)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 2, 1),
    )
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y = torch.randn(8, 1, size, size), torch.randint(0, 2, (8, size, size))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2]


def bf16_is_faster() -> bool:
    """The cached (or freshly measured) micro-benchmark: bf16 autocast >= MIN_SPEEDUP x fp32."""
    path, key = cache_file(), machine_key()
    cache = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
    if key not in cache:
        fp32, bf16 = step_time(None), step_time(torch.bfloat16)
        cache[key] = {"fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=1))
        except OSError:  # a read-only home: measure again next time
            pass
        log.info("precision: bf16 autocast is %.2fx fp32 on this CPU", fp32 / bf16)
    return cache[key]["speedup"] >= MIN_SPEEDUP


def auto_precision(gpu: bool, say: bool = True) -> str:
    """What ``auto`` resolves to on this machine (a ``train.precision`` value); why is
    logged once (``auto_reason``) unless ``say`` is false (the caller says it)."""
    precision, reason = auto_reason(gpu)
    if say and precision not in _SAID:
        _SAID.add(precision)
        log.info("precision: auto is %s (%s)", precision, reason)
    return precision


_SAID: set[str] = set()


def auto_reason(gpu: bool) -> tuple[str, str]:
    """``auto``'s choice and the reason for it. On a GPU bf16-mixed where it computes bf16
    natively (no loss scaling needed), else 16-mixed; on a CPU see the module docstring."""
    if gpu:
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", "the GPU computes bf16 natively"
        return "16-mixed", "the GPU has no native bf16: float16 with loss scaling"
    forced = os.environ.get(AUTO_ENV)
    if forced:
        if forced not in AUTO_CHOICES:
            raise ConfigError(f"${AUTO_ENV}={forced!r}: use one of {', '.join(AUTO_CHOICES)}")
        return forced, f"${AUTO_ENV} sets it"
    if not has_native_bf16():
        return "32", "this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 would be emulated"
    if not BF16_ACCURATE:
        return "32", "bf16-mixed was not as accurate in benchmarks/precision.py"
    if bf16_is_faster():
        return "bf16-mixed", "native bf16 on this CPU, and faster than fp32 here"
    return "32", "native bf16 on this CPU, but not faster than fp32 here"


def resolve_precision(precision: str | int, accelerator: str = "auto", say: bool = True) -> str:
    """``train.precision`` with ``auto`` resolved; refuses float16 without a GPU."""
    precision = str(precision)
    gpu = torch.cuda.is_available() and accelerator != "cpu"
    if precision == "auto":
        return auto_precision(gpu, say)
    if precision == "16-mixed" and not gpu:
        raise ConfigError("train.precision=16-mixed needs a GPU; on CPU use bf16-mixed or 32")
    return "32" if precision == "32-true" else precision


def run_line(precision: str, requested: str, accelerator: str = "auto") -> str:
    """A run's first words: the device, the threads and the precision, and for ``auto`` why
    it chose it."""
    gpu = torch.cuda.is_available() and accelerator != "cpu"
    device = f"GPU {torch.cuda.get_device_name(0)}" if gpu else f"CPU {cpu_model()}"
    line = f"{device}, {torch.get_num_threads()} thread(s), precision {precision}"
    if requested == "auto":
        line += f" (auto: {auto_reason(gpu)[1]})"
    return line


class ScaledByTheStep(MixedPrecision):
    """Lightning's 16-mixed, where mtlseg's training step unscales the gradients (to clip
    them, ``engine.step.Optimisation``) before Lightning's optimiser step: the step goes
    through the scaler (skipped on overflow) and the scaler updates, as in torch's AMP
    recipe; unscaling twice would be an error."""

    def optimizer_step(  # type: ignore[override]
        self, optimizer: Any, model: Any, closure: Callable[[], Any], **kwargs: Any
    ) -> Any:
        closure()
        assert self.scaler is not None  # 16-mixed always has one
        result = self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        return result


def trainer_precision(precision: str | int, accelerator: str = "auto") -> dict[str, Any]:
    """``train.precision``, resolved, as Lightning's Trainer takes it: ``{"precision": ...}``
    (one of its literals), or for 16-mixed ``{"plugins": [ScaledByTheStep]}``."""
    resolved = resolve_precision(precision, accelerator)
    if resolved == "16-mixed":
        return {"plugins": [ScaledByTheStep("16-mixed", "cuda", torch.amp.GradScaler("cuda"))]}
    return {"precision": "32-true" if resolved == "32" else resolved}
