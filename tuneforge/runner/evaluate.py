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


def _shard(n_batches: int, rank: int, world: int) -> list[int | None]:
    """Batch ids for this rank, padded with None so all ranks take the same number of turns."""
    mine = list(range(rank, n_batches, world))
    turns = math.ceil(n_batches / world)
    return mine + [None] * (turns - len(mine))


@torch.no_grad()
def eval_loss(objective, samples, batch_size: int, pad_id: int, device, autocast) -> dict:
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    total = count = 0.0
    for b in _shard(len(batches), dist.rank(), dist.world()):
        tensors = {k: v.to(device) for k, v in collate(batches[b if b is not None else 0], pad_id).items()}
        with autocast:
            s, c = objective(**tensors, reduction="sum").tolist()
        if b is not None:
            total, count = total + s, count + c
    total, count = dist.all_sum([total, count])
    loss = total / max(count, 1)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50))}


@torch.no_grad()
def exact_match(lm, tok, examples, data_spec, batch_size: int, max_new_tokens: int, device, autocast,
                synced: bool) -> tuple[dict, list[tuple[str, str, bool]]]:
    """Greedy-decode each prompt; the checker compares the completion to the reference answer."""
    prompts = [generation_prompt(tok, ex, data_spec) for ex in examples]
    batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    side, tok.padding_side = tok.padding_side, "left"
    hits, seen, shown = 0, 0, []
    try:
        for b in _shard(len(batches), dist.rank(), dist.world()):
            idx = batches[b if b is not None else 0]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with autocast:
                out = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                  synced_gpus=synced)
            if b is None:
                continue
            for i, seq in zip(idx, out[:, enc["input_ids"].shape[1]:]):
                text = tok.decode(seq, skip_special_tokens=True)
                ok = checkers.check(data_spec.checker, text, examples[i].answer)
                hits, seen = hits + ok, seen + 1
                if len(shown) < 3:
                    shown.append((examples[i].messages[-2]["content"], text.strip(), ok))
    finally:
        tok.padding_side = side
    hits, seen = dist.all_sum([hits, seen])
    return {"exact_match": hits / max(seen, 1), "eval_n": int(seen)}, shown
