"""The pieces of MATES (see the package docstring): the probed oracle, the model's own sample embeddings, the
linear data-influence model and Gumbel-top-k."""

from __future__ import annotations

import torch

from tuneforge.data.batching import collate
from tuneforge.models.layers import unwrap


def _batches(samples: list, batch_size: int, pad_id: int, device):
    for i in range(0, len(samples), batch_size):
        yield {k: v.to(device) for k, v in collate(samples[i:i + batch_size], pad_id).items()}


@torch.no_grad()
def reference_loss(engine, samples: list, batch_size: int, pad_id: int) -> float:
    """L_ref: the token-weighted mean loss of the model on the reference samples (every trained token counts
    once, whatever the batching), in eval mode and the run's autocast."""
    objective = engine.module
    was = objective.training
    objective.eval()
    total = torch.zeros(2, dtype=torch.float64)
    with engine.precision.autocast(engine.device):
        for batch in _batches(samples, batch_size, pad_id, engine.device):
            total += objective(**batch, reduction="sum").double().cpu()
    objective.train(was)
    return float(total[0] / total[1].clamp(min=1))


def one_step(engine, sample, pad_id: int) -> bool:
    """One whole optimizer step of the run's engine on `sample` alone (its mean token loss, whatever the run's
    gradient accumulation: the backward's 1/grad_accum is undone, the step is forced to a boundary). Every
    rank must call it with the same sample (the gradient is averaged over ranks). Returns whether it applied."""
    ds = engine.ds
    batch = {k: v.to(engine.device) for k, v in collate([sample], pad_id).items()}
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    ds.set_gradient_accumulation_boundary(True)
    with engine.precision.autocast(engine.device):
        loss = engine.forward(batch, divisor=max(tokens, 1) / ds.gradient_accumulation_steps())
    engine.backward(loss)
    del loss
    engine.micro_step()
    return engine.step_applied()


def probe(engine, candidates: list, reference: list, batch_size: int, pad_id: int) -> list[float]:
    """The oracle influence of each candidate (the paper's locally probed I_M(x; D_r)): from the current weights
    and optimizer state, one optimizer step on the candidate, I(x) = L_ref(before) - L_ref(after) (> 0: the step
    helped), then the engine is restored exactly (weights, moments, step counts, schedule, counters). NaN where
    the step was skipped (a non-finite gradient)."""
    before = reference_loss(engine, reference, batch_size, pad_id)
    snap = engine.snapshot()
    out = []
    for sample in candidates:
        try:
            applied = one_step(engine, sample, pad_id)
            out.append(before - reference_loss(engine, reference, batch_size, pad_id) if applied else float("nan"))
        finally:
            engine.restore(snap)
    return out


@torch.no_grad()
def embeddings(model, samples: list, batch_size: int, pad_id: int) -> torch.Tensor:
    """(n, hidden) fp32: each sample's last hidden states of the tuned model, mean-pooled over its tokens."""
    base = unwrap(model)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    for batch in _batches(samples, batch_size, pad_id, device):
        mask = batch["attention_mask"]
        if hasattr(base, "get_decoder"):
            hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False).last_hidden_state
        else:
            hidden = model(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu())
    model.train(was)
    return torch.cat(out)


def fit_predict(features: torch.Tensor, rows: list[int], targets: list[float], ridge: float) -> torch.Tensor:
    """Ridge regression of the z-scored oracle on the standardized features of the probed `rows` (the
    data-influence model), predicting every row: w = argmin ||X w - y||^2 + ridge ||w||^2, solved in its dual
    form w = X^T (X X^T + ridge I)^-1 y (probes << hidden size). Returns the predictions in z-score units."""
    x = features.double()
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-6)
    y = torch.tensor(targets, dtype=torch.float64)
    y = (y - y.mean()) / y.std().clamp(min=1e-12)
    xp = x[rows]
    alpha = torch.linalg.solve(xp @ xp.T + ridge * torch.eye(len(rows), dtype=torch.float64), y)
    return x @ (xp.T @ alpha)


def gumbel_top_k(scores: torch.Tensor, k: int, temperature: float, generator: torch.Generator) -> list[int]:
    """Sample k indices without replacement with probabilities ~ softmax(scores / temperature) (Gumbel-top-k,
    Kool et al. 2019): the top k of scores / temperature + G, G ~ Gumbel(0, 1). Sorted indices."""
    u = torch.rand(len(scores), generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    keys = scores.double() / temperature - torch.log(-torch.log(u))
    return sorted(torch.topk(keys, k).indices.tolist())
