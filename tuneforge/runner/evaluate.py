"""Evaluation: loss / perplexity on the eval split, and generation-based exact match for datasets with an
answer checker. Work is sharded over ranks; every rank runs the same number of forward passes (ZeRO-3
gathers parameters collectively, so a rank that stops early would hang the others)."""

from __future__ import annotations

import math

import torch

from tuneforge.data import checkers
from tuneforge.data.batching import collate
from tuneforge.data.encode import generation_prompt
from tuneforge.distributed import dist
from tuneforge.peft.routing import set_tasks


def _shard(n_batches: int, rank: int, world: int) -> list[int | None]:
    """Batch ids for this rank, padded with None so all ranks take the same number of turns."""
    mine = list(range(rank, n_batches, world))
    turns = math.ceil(n_batches / world)
    return mine + [None] * (turns - len(mine))


def by_task(items, task_of, tasks) -> list[tuple[str | None, list]]:
    """[(None, items)] for single-task data; else [(task, its items)] for every task that has items."""
    if not tasks:
        return [(None, items)]
    groups = [(name, [x for x in items if task_of(x) == i]) for i, name in enumerate(tasks)]
    return [(name, group) for name, group in groups if group]


@torch.no_grad()
def eval_loss(objective, samples, batch_size: int, pad_id: int, device, autocast, tasks=()) -> dict:
    """Loss and perplexity; with multi-task data also `eval_loss/<task>` (batches never mix tasks)."""
    row, grand = {}, [0.0, 0.0]
    for name, group in by_task(samples, lambda s: s.task, tasks):
        batches = [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
        total = count = 0.0
        for b in _shard(len(batches), dist.rank(), dist.world()):
            tensors = {k: v.to(device) for k, v in collate(batches[b if b is not None else 0], pad_id).items()}
            with autocast:
                s, c = objective(**tensors, reduction="sum").tolist()
            if b is not None:
                total, count = total + s, count + c
        total, count = dist.all_sum([total, count])
        grand = [grand[0] + total, grand[1] + count]
        if name is not None:
            row[f"eval_loss/{name}"] = total / max(count, 1)
    loss = grand[0] / max(grand[1], 1)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50)), **row}


@torch.no_grad()
def exact_match(lm, tok, examples, data_spec, batch_size: int, max_new_tokens: int, device, autocast,
                synced: bool) -> tuple[dict, list[tuple[str, str, bool]]]:
    """Greedy-decode each prompt; the checker compares the completion to the reference answer. With multi-task
    data also `exact_match/<task>`, each task decoded through its own modules."""
    tasks = list(data_spec.tasks)
    prompts = [generation_prompt(tok, ex, data_spec) for ex in examples]
    side, tok.padding_side = tok.padding_side, "left"
    row, grand, shown = {}, [0, 0], []
    try:
        for name, group in by_task(list(range(len(examples))), lambda i: tasks.index(examples[i].task), tasks):
            if name is not None:
                set_tasks(lm, tasks.index(name))
            batches = [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
            hits, seen = 0, 0
            for b in _shard(len(batches), dist.rank(), dist.world()):
                idx = batches[b if b is not None else 0]
                enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                with autocast:
                    out = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id, synced_gpus=synced)
                if b is None:
                    continue
                for i, seq in zip(idx, out[:, enc["input_ids"].shape[1]:]):
                    text = tok.decode(seq, skip_special_tokens=True)
                    ok = checkers.check(data_spec.checker, text, examples[i].answer)
                    hits, seen = hits + ok, seen + 1
                    if len(shown) < 3:
                        shown.append((examples[i].messages[-2]["content"], text.strip(), ok))
            hits, seen = dist.all_sum([hits, seen])
            grand = [grand[0] + hits, grand[1] + seen]
            if name is not None:
                row[f"exact_match/{name}"] = hits / max(seen, 1)
    finally:
        tok.padding_side = side
    return {"exact_match": grand[0] / max(grand[1], 1), "eval_n": int(grand[1]), **row}, shown
