"""Which samples each rank sees at each step, and how a micro-batch becomes tensors.

The order is a function of (seed, epoch) only, so every rank computes the same plan without communication,
and a run resumed at step N sees exactly the samples the uninterrupted run saw. A global batch of
micro * accum * world samples is cut into micro-batches; rank r takes micro-batch a*world + r at
accumulation step a, so 1 rank x accum 2 and 2 ranks x accum 1 train on the same samples per step.
Every rank holds every sample, so each knows the trained-token count of the whole global batch, which
normalises the step's loss (runner/objective.py), without communication.

Length bucketing (data.bucket=true, given the samples' lengths): the epoch's shuffled order is cut into spans of
BUCKET_SPAN global batches; each span is sorted by length, cut into global batches, and those are shuffled
again. A micro-batch is padded to its longest sample, so batches of similar lengths waste little compute on
padding (GSM8K chat turns, micro-batch 4: 24% of the tokens were padding, 3% bucketed). Which samples an epoch
trains on is unchanged (the same tail is dropped); the grouping depends only on the global batch size, so every
split of it into micro-batches, accumulation and ranks still trains on the same global batches.
"""

from __future__ import annotations

import math
import random

import torch

from tuneforge.data.encode import IGNORE, Sample

BUCKET_SPAN = 16  # global batches sorted together by length (more: less padding, less randomness per batch)


class BatchPlan:
    def __init__(self, n_samples: int, micro: int, accum: int, world: int, seed: int,
                 lengths: list[int] | None = None):
        self.n, self.micro, self.accum, self.world, self.seed = n_samples, micro, accum, world, seed
        self.lengths = lengths
        self.global_batch = micro * accum * world
        self.steps_per_epoch = n_samples // self.global_batch
        self._perm: tuple[int, list[int]] | None = None

    def total_steps(self, max_steps: int, epochs: float) -> int:
        return max_steps if max_steps > 0 else max(1, math.ceil(epochs * self.steps_per_epoch))

    def order(self, epoch: int) -> list[int]:
        if self._perm is None or self._perm[0] != epoch:
            idx = list(range(self.n))
            rng = random.Random(self.seed * 1_000_003 + epoch)
            rng.shuffle(idx)
            self._perm = (epoch, self._bucketed(idx, rng) if self.lengths is not None else idx)
        return self._perm[1]

    def _bucketed(self, idx: list[int], rng: random.Random) -> list[int]:
        """Each span of BUCKET_SPAN global batches sorted by length, cut into global batches, shuffled."""
        g = self.global_batch
        used = self.steps_per_epoch * g
        out = []
        for start in range(0, used, BUCKET_SPAN * g):
            span = sorted(idx[start:min(start + BUCKET_SPAN * g, used)], key=lambda i: self.lengths[i])
            batches = [span[k:k + g] for k in range(0, len(span), g)]
            rng.shuffle(batches)
            out += [i for b in batches for i in b]
        return out + idx[used:]

    def global_batch_indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        return self.order(epoch)[k * self.global_batch:(k + 1) * self.global_batch]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Sample indices of this rank's micro-batches for optimizer step `step` (one list per accumulation)."""
        chunk = self.global_batch_indices(step)
        m = self.micro
        return [chunk[(a * self.world + rank) * m:(a * self.world + rank + 1) * m] for a in range(self.accum)]

    def trained_tokens(self, step: int, samples: list[Sample]) -> int:
        """Trained tokens of step `step`'s whole global batch (all micro-batches of all ranks)."""
        return sum(samples[i].trained_tokens for i in self.global_batch_indices(step))


def collate(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample. Packed samples also carry position_ids and segment ids; multi-task
    samples carry their task ids (routed per sample by methods with task modules); samples a selector weighted
    carry their loss weights."""
    length = max(len(s.input_ids) for s in samples)
    pad = [length - len(s.input_ids) for s in samples]
    batch = {
        "input_ids": torch.tensor([s.input_ids + [pad_id] * p for s, p in zip(samples, pad)]),
        "labels": torch.tensor([s.labels + [IGNORE] * p for s, p in zip(samples, pad)]),
    }
    if samples[0].segments is not None:
        batch["position_ids"] = torch.tensor([s.position_ids + [0] * p for s, p in zip(samples, pad)])
        batch["segments"] = torch.tensor([s.segments + [0] * p for s, p in zip(samples, pad)])
    else:
        batch["attention_mask"] = torch.tensor([[1] * len(s.input_ids) + [0] * p for s, p in zip(samples, pad)])
    if samples[0].task is not None:
        batch["task_ids"] = torch.tensor([s.task for s in samples])
    if any(s.weight is not None for s in samples):
        batch["weights"] = torch.tensor([1.0 if s.weight is None else s.weight for s in samples])
    return batch


def packed_attention_mask(segments: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """(B, 1, L, L) causal mask that never crosses samples. Bool (True = attend) when dtype is None,
    else additive (0 / -inf) in `dtype`. Padding positions attend only to themselves (no NaNs)."""
    L = segments.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril()
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] > 0)
    eye = torch.eye(L, dtype=torch.bool, device=segments.device)[None] & (segments[:, :, None] == 0)
    mask = ((same & causal) | eye)[:, None]
    if dtype is None:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=segments.device).masked_fill(~mask, torch.finfo(dtype).min)
