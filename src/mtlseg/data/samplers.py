"""Batch samplers for the contrastive task (paper 001, section 4.2.2): adjacent-slice pairs.

Each batch lists pairs (2k, 2k+1) of adjacent slices of one volume. Per volume and epoch
the slices are cut into disjoint pairs (0,1), (2,3), ...; volumes with an odd number of
slices start at a random offset 0 or 1, so every adjacency is a positive in some epoch.
A slice is never in two pairs of a batch, so no sample is its own negative.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from mtlseg.errors import DataError

log = logging.getLogger(__name__)


def _chunks(items: list, size: int) -> list[list]:
    """Chunks of ``size``; a last chunk of one pair (no negative) joins the one before."""
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks[-2] += chunks.pop()
    return [c for c in chunks if len(c) >= 2]


class AdjacentPairBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size // 2`` adjacent pairs, from one patient each (``single_patient``,
    as the paper) or from anywhere in the training set.

    ``meta``: the dataset's per-sample dicts (case_id, patient_id, slice_index). Single-slice
    cases have no neighbour and are left out (logged); a patient with fewer pairs than a batch
    asks for gives a smaller batch (all its pairs), and one with a single pair is left out.
    """

    def __init__(
        self, meta: list[dict], batch_size: int, seed: int, single_patient: bool = True
    ) -> None:
        if batch_size < 4:
            raise DataError(
                f"a pair sampler needs train.batch_size >= 4 (2 pairs), got {batch_size}"
            )
        self.pairs_per_batch, self.seed, self.epoch = batch_size // 2, seed, 0
        self.single_patient = single_patient
        volumes: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.patient_of: dict[str, str] = {}
        for i, m in enumerate(meta):
            volumes[m["case_id"]].append((m["slice_index"], i))
            self.patient_of[m["case_id"]] = m["patient_id"]
        self.volumes = {c: [i for _, i in sorted(v)] for c, v in sorted(volumes.items())}
        single = [c for c, v in self.volumes.items() if len(v) < 2]
        if single:
            log.warning(
                "pair sampler: %d single-slice case(s) have no neighbour and are not used, e.g. %s",
                len(single),
                single[:3],
            )
        for c in single:
            del self.volumes[c]
        if not self.volumes:
            raise DataError("pair sampler: no case has two or more slices, so there are no pairs")
        pairs: defaultdict[str, int] = defaultdict(int)
        for c, v in self.volumes.items():
            pairs[self.patient_of[c] if single_patient else ""] += len(v) // 2
        short = sorted(p for p, n in pairs.items() if n < self.pairs_per_batch)
        if single_patient and short:
            log.warning(
                "pair sampler: %d of %d patients have fewer than %d adjacent pairs "
                "(%d slices); their batches hold all their pairs instead, e.g. %s",
                len(short),
                len(pairs),
                self.pairs_per_batch,
                2 * self.pairs_per_batch,
                short[:3],
            )
        self._len = sum(len(_chunks([0] * n, self.pairs_per_batch)) for n in pairs.values())
        if self._len == 0:
            raise DataError("pair sampler: too few adjacent pairs for one batch of two pairs")

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it on the batch sampler too
        self.epoch = epoch

    def _pairs(self, g: torch.Generator) -> dict[str, list[tuple[int, int]]]:
        groups: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for case, idx in self.volumes.items():
            n = len(idx)
            offset = int(torch.randint(2, (1,), generator=g)) if n % 2 else 0
            key = self.patient_of[case] if self.single_patient else ""
            groups[key] += [(idx[z], idx[z + 1]) for z in range(offset, n - 1, 2)]
        return groups

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        batches = []
        for _, pairs in sorted(self._pairs(g).items()):
            order = torch.randperm(len(pairs), generator=g).tolist()
            for chunk in _chunks([pairs[i] for i in order], self.pairs_per_batch):
                batches.append([i for pair in chunk for i in pair])
        for b in torch.randperm(len(batches), generator=g).tolist():
            yield batches[b]

    def __len__(self) -> int:
        return self._len
