"""The deterministic batch plan: same samples per step whatever the rank/accumulation split."""

from __future__ import annotations

import random

import torch

from tuneforge.data.batching import BatchPlan, collate, packed_attention_mask
from tuneforge.data.encode import IGNORE, Sample, pack


def step_samples(plan, step):
    return sorted(i for r in range(plan.world) for mb in plan.micro_batches(step, r) for i in mb)


def test_one_rank_with_accumulation_equals_two_ranks():
    a = BatchPlan(100, micro=4, accum=2, world=1, seed=7)
    b = BatchPlan(100, micro=4, accum=1, world=2, seed=7)
    for step in range(30):  # crosses epoch boundaries (12 steps per epoch)
        assert step_samples(a, step) == step_samples(b, step)
        assert len(step_samples(a, step)) == 8 == len(set(step_samples(a, step)))


def test_epoch_covers_each_sample_once_and_reshuffles():
    plan = BatchPlan(16, micro=2, accum=1, world=2, seed=1)
    epoch0 = [i for s in range(plan.steps_per_epoch) for i in step_samples(plan, s)]
    assert sorted(epoch0) == list(range(16))
    assert plan.order(0) != plan.order(1)
    assert plan.total_steps(-1, 2.5) == 10 and plan.total_steps(3, 99) == 3


def test_collate_pads_right_and_masks():
    b = collate([Sample([1, 2, 3], [IGNORE, 2, 3]), Sample([4], [4])], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_packed_mask_is_block_causal():
    seg = torch.tensor([[1, 1, 2, 2, 0]])
    m = packed_attention_mask(seg, None)[0, 0]
    expect = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]).bool()
    assert torch.equal(m, expect)
    additive = packed_attention_mask(seg, torch.float32)[0, 0]
    assert torch.equal(additive == 0, expect)


def test_trained_tokens_counts_what_every_rank_trains_on():
    """The global batch's trained tokens, known to every rank from the plan, equal the shifted labels != IGNORE
    summed over the collated micro-batches of all ranks (the first label of a row is never a target)."""
    rows = [Sample(list(range(n + 2)), [7 if i % 3 else IGNORE for i in range(n + 2)]) for n in range(24)]
    packed = pack(rows, max_length=40)  # pack ignores each sample's first label
    for samples in (rows, packed):
        for world, accum in ((1, 1), (1, 2), (2, 1), (2, 2)):
            plan = BatchPlan(len(samples), micro=2, accum=accum, world=world, seed=3)
            for step in range(5):
                counted = sum(int((collate([samples[i] for i in mb], pad_id=0)["labels"][:, 1:] != IGNORE).sum())
                              for r in range(world) for mb in plan.micro_batches(step, r))
                assert plan.trained_tokens(step, samples) == counted > 0


def test_bucketing_pads_less_and_keeps_each_epochs_samples_and_global_batches():
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(203)]
    plain, bucketed = BatchPlan(203, 4, 1, 1, seed=7), BatchPlan(203, 4, 1, 1, seed=7, lengths=lengths)

    def padded(plan):
        return sum(max(lengths[i] for i in mb) * len(mb) for s in range(plan.steps_per_epoch)
                   for mb in plan.micro_batches(s, 0))

    for epoch in (0, 1):  # the same samples trained (the same tail dropped), in another grouping
        steps = range(epoch * 50, epoch * 50 + 50)
        assert (sorted(i for s in steps for i in bucketed.global_batch_indices(s))
                == sorted(i for s in steps for i in plain.global_batch_indices(s)))
    assert padded(bucketed) < 0.8 * padded(plain)
    # any split of a global batch of 8 trains on the same global batches
    splits = [BatchPlan(203, m, a, w, seed=7, lengths=lengths) for m, a, w in ((8, 1, 1), (2, 2, 2), (4, 1, 2))]
    for step in range(60):  # crosses an epoch boundary (25 steps per epoch)
        assert step_samples(splits[0], step) == step_samples(splits[1], step) == step_samples(splits[2], step)


def test_bucketing_is_opt_in_and_packing_turns_it_off():
    """Samples are batched by length only with data.bucket=true; packs are all max_length long, so with
    data.packing=true the plan is the plain shuffle (and the combination is not an error)."""
    from types import SimpleNamespace

    from tuneforge.config.compose import build_specs, compose
    from tuneforge.runner.trainset import TrainSet

    rows = [Sample(list(range(n + 2)), list(range(n + 2))) for n in range(16)]
    trainer = SimpleNamespace(micro_batch_size=2, grad_accum=1, seed=0)
    assert build_specs(compose([]))["data"].bucket is False
    for packing, bucketed in ((False, True), (True, False)):
        spec = build_specs(compose(["data.bucket=true", f"data.packing={str(packing).lower()}"]))["data"]
        assert (TrainSet(rows, spec, trainer, world=1).plan.lengths is not None) is bucketed
