"""Bidirectional copy-paste (Bai et al., CVPR 2023): the student segments images mixed from
a labelled and an unlabelled one, supervised by the masks and the EMA teacher's
pseudo-labels mixed the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss
from monai.transforms import KeepLargestConnectedComponent

from mtlseg.config import TermConfig
from mtlseg.errors import ConfigError, TrainingError
from mtlseg.tasks.base import Requirements, Task
from mtlseg.tasks.segmentation import SegmentationTask
from mtlseg.terms.base import TERMS, Forward, TeacherSpec, Term, TermContext


@dataclass
class BCPParams:
    segmentation: str = ""  # empty: the recipe's primary task
    pool: bool = True  # False: the pre-training stage, two labelled images mixed
    alpha: float = 0.5  # weight of the pseudo-labelled region (the authors' u_weight)
    box: float = 2 / 3  # side of the pasted box, as a fraction of the image's
    decay: float = 0.99  # the teacher's fixed EMA decay (the authors': 0.99, no ramp)
    largest_component: bool = True  # pseudo-labels keep each class's largest component

    def __post_init__(self) -> None:
        if not 0.0 < self.box < 1.0:
            raise ValueError(f"box must be a fraction in (0, 1), got {self.box}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")


def box_mask(
    height: int,
    width: int,
    fraction: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(H, W) float mask M: 0 in a box of int(fraction * side) per axis at a uniformly random
    position (drawn from ``generator``, the step's), 1 outside (the authors'
    ``generate_mask``; one box for the whole batch, as theirs)."""
    bh, bw = int(height * fraction), int(width * fraction)
    top = int(torch.randint(0, max(1, height - bh), (), generator=generator))
    left = int(torch.randint(0, max(1, width - bw), (), generator=generator))
    mask = torch.ones(height, width, device=device)
    mask[top : top + bh, left : left + bw] = 0.0
    return mask


def mix(outer: torch.Tensor, inner: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``outer`` where M = 1 and ``inner`` in the box (M = 0): (B, C, H, W) images or (B, H,
    W) label maps, M (H, W) broadcast over the leading axes."""
    if outer.is_floating_point():
        return outer * mask + inner * (1 - mask)
    return torch.where(mask.bool(), outer, inner)


class RegionLoss:
    """BCP's L_seg on one region: (Dice + CE) / 2, each restricted to the region's pixels.

    Dice: SSL4MIS's masked soft Dice (softmax, squared denominators, sums over the batch,
    the mean over every class, background included; MONAI's ``MaskedDiceLoss``). CE: the
    mean cross-entropy over the region's pixels. Pixels of ``ignore_index`` are left out.
    """

    def __init__(self, ignore_index: int | None) -> None:
        self.ignore_index = ignore_index
        self.dice = MaskedDiceLoss(
            include_background=True,
            to_onehot_y=False,  # one-hot before masking: MONAI masks the target as given
            softmax=True,
            squared_pred=True,
            batch=True,
            smooth_nr=1e-10,
            smooth_dr=1e-10,
        )

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) logits, (B, H, W) classes, (H, W) or (B, H, W) 0/1 region -> (dice, ce)."""
        weight = region.expand(target.shape).float()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            weight = weight * keep
            target = torch.where(keep, target, torch.zeros_like(target))
        logits = logits.float()
        onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
        dice = self.dice(logits, onehot, weight[:, None])
        ce = F.cross_entropy(logits, target, reduction="none")
        ce = (ce * weight).sum() / (weight.sum() + 1e-16)
        return dice, ce


@TERMS.register("bcp")
class BidirectionalCopyPaste(Term[BCPParams]):
    """Bai et al., CVPR 2023 (Sec. 3, the bidirectional copy-paste and its loss), as the
    authors' ``ACDC_BCP_train.py`` runs it. Each step splits the labelled rows into halves
    a, b and the pool's into u_a, u_b, draws a box mask M (0 in a box of 2/3 the side, 1
    outside) and segments two mixed images with the student:

    - X_out = u_a * M + a * (1 - M): the labelled box pasted outward into an unlabelled
      image, supervised by the teacher's pseudo-label of u_a outside the box (weight alpha)
      and a's mask inside (weight 1);
    - X_in = b * M + u_b * (1 - M): an unlabelled box pasted inward into a labelled image,
      supervised by b's mask outside (1) and u_b's pseudo-label inside (alpha).

    The loss is (sum of the Dice terms + sum of the CE terms) / 2 (``RegionLoss``), with
    alpha = 0.5. Pseudo-labels: the EMA teacher's argmax on u_a, u_b, each foreground
    class cut to its largest connected component per image (``largest_component``). The
    teacher is a fixed-decay (0.99) EMA of the student; a stage with ``reset_teacher``
    makes it the pre-trained student, as the authors initialise it.

    ``pool: false`` is the authors' pre-training: X = a * M + b * (1 - M) from two labelled
    images, both regions with weight 1, no teacher, no pool. A self-training term given no
    pool (a run without one: ``check_requirements`` warns) mixes the same way: labelled-only.

    The term's loss is the segmentation's supervision: the task's own loss on the batch is
    not computed while it trains (``replaces``), and it runs the student on its mixed
    images only.

    The reference (``code/ACDC_BCP_train.py``) with ``unet-bcp``'s value beside: 10k
    pre-training iterations of 40k (a quarter of the run: the stage ``fraction: 0.25``);
    student and teacher start self-training from the pre-trained network (``reset_teacher``);
    self-training at a constant learning rate (the stage's ``scheduler: constant``, at
    ``train.lr``); EMA decay 0.99 (0.99); alpha 0.5 (0.5); box 2/3 of the side (2/3).
    Deviations: the teacher starts from the student at the end of pre-training (the
    authors take the best-on-validation pre-training checkpoint); Adam at mtlseg's defaults
    instead of SGD 0.01; the mixed images take the outer image's metadata (FiLM); only the
    full-size logits are supervised (deep supervision heads get no gradient: the recipe
    turns it off); 2D only.
    """

    Config = BCPParams
    reads_outputs = False
    example_tasks = ("segmentation",)

    def __init__(
        self, cfg: TermConfig, tasks: dict[str, Task], primary: SegmentationTask | None = None
    ) -> None:
        super().__init__(cfg, tasks, primary)
        self.seg = self.segmentation_task(self.params.segmentation)
        if self.seg.params.mode != "softmax":
            raise ConfigError(
                f"terms.{self.name}: BCP mixes class-index masks; tasks.{self.seg.name} must "
                "use mode: softmax"
            )
        self.region_loss = RegionLoss(self.seg.params.ignore_index)
        self.keep_largest: KeepLargestConnectedComponent | None = None
        if self.params.largest_component and self.seg.ctx.num_classes > 1:
            self.keep_largest = KeepLargestConnectedComponent(
                applied_labels=list(range(1, self.seg.ctx.num_classes)), independent=True
            )

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.seg.name,)

    @classmethod
    def requirements(cls, params: Any) -> Requirements:
        return Requirements(masks=True, mixes_pool=params.pool, dims=(2,))

    @property
    def teacher(self) -> TeacherSpec | None:
        return TeacherSpec(self.params.decay, ramp=False) if self.params.pool else None

    @property
    def replaces(self) -> tuple[str, ...]:
        return (self.seg.name,)

    def pseudo_labels(self, teacher: Forward, x: torch.Tensor, meta: Any) -> torch.Tensor:
        """The teacher's classes (B, H, W) on images ``x``, each foreground class cut to its
        largest connected component per image."""
        labels = self.seg.decode(teacher(x, meta)[self.seg.name])
        if self.keep_largest is None:
            return labels
        cut = [torch.as_tensor(self.keep_largest(one[None].cpu()))[0] for one in labels]
        return torch.stack(cut).to(labels.device, labels.dtype)

    def __call__(
        self, outputs: dict[str, Any], batch: dict[str, Any], ctx: TermContext
    ) -> torch.Tensor:
        if ctx.student is None:
            raise TrainingError(f"terms.{self.name}: BCP runs the student on mixed images")
        x, y, meta = batch["image"], batch["mask"], batch.get("meta")
        flags = batch.get("labelled")
        if flags is None:
            flags = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        labelled = flags.nonzero()[:, 0]
        pool = (~flags).nonzero()[:, 0]
        m = box_mask(x.shape[-2], x.shape[-1], self.params.box, x.device, ctx.generator)
        if not self.params.pool or len(pool) == 0:  # pre-training, or no pool at all
            n = len(labelled) // 2
            self._need(n, len(labelled), None)
            a, b = labelled[:n], labelled[n : 2 * n]
            logits = ctx.student(mix(x[a], x[b], m), _rows(meta, a))[self.seg.name]
            return self._combine([(logits, y[a], y[b], 1.0, 1.0)], m)
        n = min(len(labelled), len(pool)) // 2
        self._need(n, len(labelled), len(pool))
        if ctx.teacher is None:
            raise TrainingError(f"terms.{self.name}: BCP needs the EMA teacher")
        a, b = labelled[:n], labelled[n : 2 * n]
        ua, ub = pool[:n], pool[n : 2 * n]
        with torch.no_grad():
            pa = self.pseudo_labels(ctx.teacher, x[ua], _rows(meta, ua))
            pb = self.pseudo_labels(ctx.teacher, x[ub], _rows(meta, ub))
        alpha = self.params.alpha
        out = ctx.student(mix(x[ua], x[a], m), _rows(meta, ua))[self.seg.name]
        inward = ctx.student(mix(x[b], x[ub], m), _rows(meta, b))[self.seg.name]
        return self._combine([(out, pa, y[a], alpha, 1.0), (inward, y[b], pb, 1.0, alpha)], m)

    def _combine(
        self,
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]],
        m: torch.Tensor,
    ) -> torch.Tensor:
        """(sum of Dice + sum of CE) / 2 over each mixed image's outer (M) and box (1 - M)
        regions, each weighted: (logits, outer target, box target, outer w, box w)."""
        total = torch.zeros((), device=m.device)
        for logits, outer, inner, w_outer, w_inner in parts:
            for target, region, w in ((outer, m, w_outer), (inner, 1 - m, w_inner)):
                dice, ce = self.region_loss(logits, target, region)
                total = total + w * (dice + ce)
        return total / 2

    def _need(self, n: int, labelled: int, pool: int | None) -> None:
        if n > 0:
            return
        got = f"{labelled} labelled" + (f" and {pool} pool" if pool is not None else "")
        what = "labelled and 2 pool images" if pool is not None else "labelled images"
        raise TrainingError(
            f"terms.{self.name}: BCP pairs images; each batch needs 2 {what}, got {got} "
            "(raise train.batch_size / train.unlabelled_batch_size)"
        )


def _rows(meta: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return meta[rows] if meta is not None else None
