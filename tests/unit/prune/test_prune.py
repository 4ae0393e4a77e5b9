"""The pruning methods' defining properties on toy layers, each checked against a computation written here from
the papers' equations (never with tuneforge's own helpers): exact sparsity and N:M patterns, Wanda's and
SparseGPT's masks (and SparseGPT's OBS updates) by hand, DSnoT never increasing |e| and keeping the sparsity."""

from __future__ import annotations

import pytest
import torch

from tuneforge import registry
from tuneforge.prune.calib import Stats


def toy(rows: int, cols: int, tokens: int = 64, seed: int = 0, offset: float = 0.0):
    """(W [rows, cols], X [tokens, cols]) in float64; `offset` gives the inputs a non-zero mean per feature."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64) * torch.rand(cols, generator=g, dtype=torch.float64)
    return w, x + offset * torch.randn(cols, generator=g, dtype=torch.float64)


def stats_of(x: torch.Tensor, windows: int = 4) -> Stats:
    s = Stats(torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype), torch.zeros(x.shape[1], dtype=x.dtype))
    for part in x.chunk(windows):
        s.add(part)
    return s


def pruner(name: str, **knobs):
    return registry.build("prune", registry.entry("prune", name).config(**knobs))


def zeros_per_group(mask: torch.Tensor, m: int) -> set[int]:
    return {int(mask[r, c:c + m].sum()) for r in range(mask.shape[0]) for c in range(0, mask.shape[1], m)}


METHODS = [("magnitude", {}), ("wanda", {}), ("sparsegpt", {}), ("dsnot", {"skip_modules": []}),
           ("dsnot", {"init": "sparsegpt", "skip_modules": []})]


@pytest.mark.parametrize("name,knobs", METHODS, ids=[f"{n}-{k.get('init', '')}" for n, k in METHODS])
@pytest.mark.parametrize("pattern,scope,sparsity", [("unstructured", "uniform", 0.5), ("unstructured", "per-layer", 0.3),
                                                    ("2:4", "uniform", 0.5), ("4:8", "uniform", 0.5)])
def test_exact_sparsity_and_nm_pattern(name, knobs, pattern, scope, sparsity):
    w, x = toy(16, 32, offset=1.0)
    p = pruner(name, sparsity=sparsity, pattern=pattern, scope=scope, **knobs)
    out, mask, _ = p.prune(w, stats_of(x), "model.layers.0.self_attn.q_proj")
    assert torch.equal(out == 0, mask)  # the zeros are exactly the mask
    assert torch.equal(out[~mask], w[~mask]) or name == "sparsegpt"  # only SparseGPT updates kept weights
    if pattern != "unstructured":
        n, m = map(int, pattern.split(":"))
        assert zeros_per_group(mask, m) == {n}
    elif scope == "uniform":  # every output row: exactly round(sparsity x in)
        assert set(mask.sum(1).tolist()) == {round(sparsity * 32)}
    else:  # the whole matrix (SparseGPT: each block of 128 columns; here one block)
        assert int(mask.sum()) == round(sparsity * 16 * 32)


def test_wanda_mask_by_hand():
    """Eq. 1: S_ij = |W_ij| * ||X_j||_2; each output row loses its 4 lowest of 8."""
    w, x = toy(4, 8, tokens=12, seed=1)
    norms = [sum(float(x[t, j]) ** 2 for t in range(x.shape[0])) ** 0.5 for j in range(8)]
    want = torch.zeros(4, 8, dtype=torch.bool)
    for i in range(4):
        scores = sorted(range(8), key=lambda j: abs(float(w[i, j])) * norms[j])
        for j in scores[:4]:
            want[i, j] = True
    _, mask, _ = pruner("wanda", sparsity=0.5).prune(w, stats_of(x, 3), "q_proj")
    assert torch.equal(mask, want)
    _, mask24, _ = pruner("wanda", sparsity=0.5, pattern="2:4").prune(w, stats_of(x, 3), "q_proj")
    for i in range(4):
        for g in (0, 4):
            low = sorted(range(g, g + 4), key=lambda j: abs(float(w[i, j])) * norms[j])[:2]
            assert set(torch.nonzero(mask24[i, g:g + 4]).flatten().add(g).tolist()) == set(low)


def obs_by_hand(w: torch.Tensor, x: torch.Tensor, sparsity: float, blocksize: int, nm=None, damp: float = 0.01):
    """SparseGPT from its equations: H = 2 X^T X + lambda I (lambda = damp * mean diag(2 X^T X)); columns left to
    right; the mask of each block of columns chosen when the sweep reaches it, by the OBS saliency
    w_c^2 / [(H_F)^-1]_00 with F = the columns c.. not yet processed (on the weights as updated so far): the lowest
    round(sparsity x rows x block) of the block, or (N:M) the N lowest of each row's group of M; then each pruned
    weight w_i is removed with the OBS update  delta_F = -(w_i / [(H_F)^-1]_00) (H_F)^-1[0, :]  (F = i..)."""
    W = w.clone()
    h = 2 * x.T @ x
    h = h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    rows, cols = W.shape
    mask = torch.zeros(rows, cols, dtype=torch.bool)

    def sal(r, c):
        return float(W[r, c]) ** 2 / float(torch.linalg.inv(h[c:, c:])[0, 0])

    for i in range(cols):
        if nm is None and i % blocksize == 0:
            block = [(r, c) for r in range(rows) for c in range(i, min(i + blocksize, cols))]
            for r, c in sorted(block, key=lambda rc: sal(*rc))[:round(sparsity * len(block))]:
                mask[r, c] = True
        if nm is not None and i % nm[1] == 0:
            for r in range(rows):
                for c in sorted(range(i, i + nm[1]), key=lambda c: sal(r, c))[:nm[0]]:
                    mask[r, c] = True
        hinv = torch.linalg.inv(h[i:, i:])
        for r in range(rows):
            if mask[r, i]:
                W[r, i:] -= float(W[r, i]) / float(hinv[0, 0]) * hinv[0, :]
                W[r, i] = 0.0
    return W, mask


@pytest.mark.parametrize("blocksize,pattern", [(128, "unstructured"), (4, "unstructured"), (4, "2:4")])
def test_sparsegpt_matches_obs_by_hand(blocksize, pattern):
    w, x = toy(4, 8, tokens=24, seed=2)
    nm = tuple(map(int, pattern.split(":"))) if pattern != "unstructured" else None
    want_w, want_mask = obs_by_hand(w, x, 0.5, blocksize, nm)
    got_w, got_mask, before = pruner("sparsegpt", sparsity=0.5, pattern=pattern, blocksize=blocksize).prune(
        w, stats_of(x), "q_proj")
    assert torch.equal(got_mask, want_mask)
    torch.testing.assert_close(got_w, want_w, rtol=1e-9, atol=1e-9)
    assert torch.equal(before, w.masked_fill(want_mask, 0))


def reconstruction_error(w, mask, x) -> torch.Tensor:
    """e per output row: sum over pruned j of W_ij E[X_j] (E over the tokens)."""
    return (w * mask * x.mean(0)[None, :]).sum(1)


@pytest.mark.parametrize("init,pattern", [("wanda", "unstructured"), ("sparsegpt", "unstructured"), ("wanda", "2:4")])
def test_dsnot_never_increases_error_and_keeps_sparsity(init, pattern):
    w, x = toy(32, 64, tokens=64, seed=3, offset=2.0)
    stats = stats_of(x)
    knobs = dict(sparsity=0.5, pattern=pattern, init=init, threshold=0.0, skip_modules=[])
    _, mask0, _ = pruner(init, sparsity=0.5, pattern=pattern, scope="uniform").prune(w, stats, "q_proj")
    e_prev, masks = reconstruction_error(w, mask0, x).abs(), []
    for cycles in range(0, 12):  # the mask after each number of swaps: |e| per row never goes up
        _, mask, _ = pruner("dsnot", max_cycles=cycles, **knobs).prune(w, stats, "q_proj")
        e = reconstruction_error(w, mask, x).abs()
        assert (e <= e_prev + 1e-12).all(), (cycles, (e - e_prev).max())
        assert torch.equal(mask.sum(1), mask0.sum(1))  # each row keeps its number of zeros
        if pattern == "2:4":
            assert zeros_per_group(mask, 4) == {2}
        e_prev = e
        masks.append(mask)
    assert (e_prev < reconstruction_error(w, mask0, x).abs() - 1e-6).sum() >= 8  # DSnoT moved many rows
    assert torch.equal(masks[0], mask0)


def test_dsnot_stops_at_threshold_and_skips_modules():
    w, x = toy(16, 32, seed=4, offset=2.0)
    stats = stats_of(x, windows=4)
    _, mask0, _ = pruner("wanda", sparsity=0.5).prune(w, stats, "q_proj")
    e0 = reconstruction_error(w, mask0, x).abs()
    per_window = x.shape[0] / 4  # the threshold is on the reference's scale: E[X] summed over a window's tokens
    big = float(e0.max()) * per_window + 1
    _, same, _ = pruner("dsnot", threshold=big, skip_modules=[]).prune(w, stats, "q_proj")
    assert torch.equal(same, mask0)  # every |e| already under the threshold: nothing moves
    _, skipped, _ = pruner("dsnot", threshold=0.0).prune(w, stats, "model.layers.0.mlp.up_proj")
    assert torch.equal(skipped, mask0)  # skip_modules=[mlp] (the reference's default) keeps the initial mask
