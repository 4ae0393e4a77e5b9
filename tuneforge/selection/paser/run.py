"""PASER with the models: load the original, score the pool with both models, then the steps of steps.py."""

from __future__ import annotations

import numpy as np
import torch

from tuneforge.data.batching import collate
from tuneforge.errors import RunError
from tuneforge.selection import keep_count
from tuneforge.selection.paser import original_spec
from tuneforge.selection.paser.steps import (
    ConceptGraph,
    allocate,
    concepts,
    efficiency,
    spectral_nmf_clusters,
    token_jsd,
)


def load_original(ref: str, seed: int, tok, like: torch.nn.Module) -> torch.nn.Module:
    """The unpruned model, on the device and in the dtype of the run's model, in eval mode (a random-init preset
    is built with the run's seed, so it equals the run's model before pruning)."""
    from tuneforge.models.load import load_model

    p = next(like.parameters())
    return load_model(original_spec(ref), seed=seed, vocab_size=len(tok)).to(p.device, p.dtype).eval()


@torch.no_grad()
def score(pruned, original, samples: list, batch_size: int, pad_id: int) -> tuple[np.ndarray, list[float]]:
    """(the original model's mean-pooled last hidden states, each sample's mean per-position JSD between the two
    models' next-token distributions). Every rank runs the same forwards (ZeRO-3 gathers are collective)."""
    was_training, device = pruned.training, next(original.parameters()).device
    pruned.eval()
    embs, jsd = [], []
    for i in range(0, len(samples), batch_size):
        batch = collate(samples[i:i + batch_size], pad_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        out = original(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        logits_pruned = pruned(input_ids=ids, attention_mask=mask).logits
        m = mask.float()
        embs.append(((out.hidden_states[-1].float() * m[..., None]).sum(1) / m.sum(1, keepdim=True)).cpu())
        if logits_pruned.shape[-1] != out.logits.shape[-1]:
            raise RunError(f"selection.original has {out.logits.shape[-1]} output tokens, the run's model "
                           f"{logits_pruned.shape[-1]}: PASER compares two models over one tokenizer")
        jsd += ((token_jsd(out.logits, logits_pruned) * m).sum(1) / m.sum(1)).tolist()
    pruned.train(was_training)
    return torch.cat(embs).numpy(), jsd


def choose(cluster: np.ndarray, jsd: list[float], lengths: list[int], texts: list[str], budget: int,
           k: int, use_ccg: bool) -> tuple[list[int], dict]:
    """Steps 2-5 on scored samples: (chosen indices, report)."""
    ids = sorted(set(cluster.tolist()))
    cds = [float(np.mean([jsd[i] for i in range(len(jsd)) if cluster[i] == c])) for c in ids]
    budgets = allocate(cds, budget)
    ies = [efficiency(j, n) for j, n in zip(jsd, lengths)]
    ranked = {c: sorted((i for i in range(len(jsd)) if cluster[i] == c), key=lambda i: (-ies[i], i)) for c in ids}
    graph, chosen, rejected = ConceptGraph(), [], set()

    def take(i: int) -> bool:
        cs = concepts(texts[i])
        if use_ccg and not graph.consistent(cs):
            rejected.add(i)
            return False
        graph.add(cs)
        chosen.append(i)
        return True

    for c, b in sorted(zip(range(len(ids)), budgets), key=lambda cb: (-cds[cb[0]], cb[0])):
        got = 0
        for i in ranked[ids[c]]:
            if got == b:
                break
            got += take(i)
    taken = set(chosen)
    for i in sorted((i for i in range(len(jsd)) if i not in taken), key=lambda i: (-ies[i], i)):
        if len(chosen) == budget:
            break
        take(i)
    report = {"jsd": jsd, "cluster": cluster.tolist(), "ies": ies, "cds": dict(zip(map(str, ids), cds)),
              "budget": dict(zip(map(str, ids), budgets)), "ccg_rejected": sorted(rejected - set(chosen)), "clusters_asked": k}
    return sorted(chosen), report


def paser_select(spec, samples: list, ctx) -> tuple[list[int], dict]:
    tok = ctx.tokenizer
    original = load_original(spec.original, ctx.seed, tok, ctx.model)
    emb, jsd = score(ctx.model, original, samples, spec.batch_size, tok.pad_token_id)
    del original
    cluster = spectral_nmf_clusters(emb, spec.clusters, ctx.seed)
    texts = [tok.decode(s.input_ids, skip_special_tokens=True) for s in samples]
    budget = keep_count(spec.fraction, spec.count, len(samples))
    return choose(cluster, jsd, [len(s.input_ids) for s in samples], texts, budget, spec.clusters, spec.ccg)
