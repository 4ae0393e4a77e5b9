"""Middo's three diagnostics: per-sample signals from the model, and the mean +- m sigma rules that flag samples.

    complexity  loss under the previous model AND under the current one both above mean + m sigma (a sample the
                model found hard and still finds hard: complexity_filter.py's rule)
    diversity   mean cosine similarity to the k nearest training samples (mean-pooled last hidden states) below
                mean - m sigma (an isolated sample: diversity_filter.py's rule)
    quality     the model's own judgement, log p(" Yes") - log p(" No") after QUALITY_PROMPT, below mean - m sigma

Means and sigmas (population standard deviation) are taken over the current training set; a pool sample outside
it is judged by the same thresholds (its neighbours are the training set's samples).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tuneforge.data.batching import collate

QUALITY_PROMPT = ("Here is an example from the training set of an assistant.\n\n{text}\n\n"
                  "Is this a clear, complete and correct example of a helpful answer? Answer Yes or No.\nAnswer:")


def above(x: np.ndarray, ref: np.ndarray, m: float) -> np.ndarray:
    return x > ref.mean() + m * ref.std()


def below(x: np.ndarray, ref: np.ndarray, m: float) -> np.ndarray:
    return x < ref.mean() - m * ref.std()


def neighbour_similarity(emb: np.ndarray, members: list[int], k: int) -> np.ndarray:
    """For every row of `emb`: the mean cosine similarity to its k most similar rows among `members` (itself
    excluded)."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    sim = e @ e[members].T
    sim[members, np.arange(len(members))] = -np.inf
    k = max(1, min(k, len(members) - 1))
    return np.sort(sim, axis=1)[:, -k:].mean(1)


def flags(prev: np.ndarray, cur: np.ndarray, similarity: np.ndarray, quality: np.ndarray, members: list[int],
          m: float) -> dict[str, np.ndarray]:
    """Boolean flags of every pool sample per diagnostic, thresholds from the training set `members`."""
    t = members
    return {"complexity": above(prev, prev[t], m) & above(cur, cur[t], m),
            "diversity": below(similarity, similarity[t], m),
            "quality": below(quality, quality[t], m)}


@torch.no_grad()
def loss_and_embedding(model, samples: list, batch_size: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean token loss over each sample's trained tokens, its mean-pooled last hidden state). Every rank runs the
    same forwards (ZeRO-3 gathers are collective)."""
    device = next(model.parameters()).device
    losses, embs = [], []
    for i in range(0, len(samples), batch_size):
        b = collate(samples[i:i + batch_size], pad_id)
        mask = b["attention_mask"].to(device)
        out = model(input_ids=b["input_ids"].to(device), attention_mask=mask, output_hidden_states=True)
        target = b["labels"][:, 1:].to(device)
        nll = F.cross_entropy(out.logits[:, :-1].float().transpose(1, 2), target, ignore_index=-100, reduction="none")
        losses += (nll.sum(1) / (target != -100).sum(1).clamp(min=1)).tolist()
        m = mask.float()[..., None]
        embs.append(((out.hidden_states[-1].float() * m).sum(1) / m.sum(1)).cpu())
    return np.array(losses), torch.cat(embs).numpy()


@torch.no_grad()
def self_quality(model, tok, samples: list, batch_size: int) -> np.ndarray:
    """log p(" Yes") - log p(" No") of the next token after QUALITY_PROMPT holding the sample's text."""
    device = next(model.parameters()).device
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in (" Yes", " No"))
    prompts = [tok.encode(QUALITY_PROMPT.format(text=tok.decode(s.input_ids, skip_special_tokens=True).strip()),
                          add_special_tokens=False) for s in samples]
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([p + [tok.pad_token_id] * (width - len(p)) for p in chunk], device=device)
        mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in chunk], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = logits[torch.arange(len(chunk)), mask.sum(1) - 1].float().log_softmax(-1)
        out += (last[:, yes] - last[:, no]).tolist()
    return np.array(out)
