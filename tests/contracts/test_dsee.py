"""DSEE's defining properties: the sparse part's support is fixed (chosen from a GreBsmo low-rank + sparse
decomposition of W, whose objective never increases and which recovers a planted sparse support) and only its
values change; the pruned export (export=[merge,prune]) reaches the requested sparsity exactly; head pruning removes
whole heads."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.contracts.test_peft_family import TINY, Row, make, train
from tuneforge.config.compose import compose, export_stages
from tuneforge.export.base import ExportContext, run_stages
from tuneforge.models.layers import decoder_layers
from tuneforge.peft.adapters import merge
from tuneforge.peft.dsee.layer import decompose, support

N = 16


def exported(row, model, method, specs):
    """The row's export stages run in memory on the trained model (what `tuneforge export` runs before saving)."""
    return run_stages(model, export_stages(compose([*TINY, *row.overrides])), ExportContext(method, specs))


def test_sparse_support_is_fixed_and_only_it_changes(tmp_path):
    model, method, batch, *_ = make(Row(["peft=dsee", "peft.r=2", f"peft.sparse_n={N}", "peft.decomp_iters=1"], r""),
                                    tmp_path)
    m = next(iter(method.modules.values()))
    w = m.base.weight.detach().clone()
    u, s, v = torch.linalg.svd(w)
    residual = (w - (u[:, :8] * s[:8]) @ v[:8]).abs().flatten()  # decomp_iters=1: one exact truncated SVD step
    assert set(m.sparse_index.tolist()) == set(torch.topk(residual, N).indices.tolist())
    index = {n: mod.sparse_index.clone() for n, mod in method.modules.items()}
    train(model, method, batch)
    for n, mod in method.modules.items():
        assert torch.equal(mod.sparse_index, index[n])
        dense = mod.sparse().detach()
        assert dense.count_nonzero() == N  # every support entry trained, nothing outside it
        assert set(dense.flatten().nonzero().flatten().tolist()) == set(index[n].tolist())
    assert not torch.equal(support(w, N, "magnitude", 8, 0), m.sparse_index)  # the two rules differ here


@pytest.mark.parametrize("how,p", [("unstructured", 0.5), ("unstructured", 0.37), ("rows", 0.25)])
def test_pruned_export_reaches_sparsity_exactly(tmp_path, how, p):
    row = Row(["peft=dsee", "peft.r=2", "export=[merge,prune]", f"export.prune.how={how}", f"export.prune.sparsity={p}"],
              r"")
    model, method, batch, specs, *_ = make(row, tmp_path)
    train(model, method, batch, steps=1)
    names = list(method.modules)
    merged = exported(row, model, method, specs)
    for n in names:
        w = merged.get_submodule(n).weight
        if how == "unstructured":
            assert (w == 0).sum().item() == round(p * w.numel())
        else:
            assert (w == 0).all(dim=1).sum().item() == round(p * w.shape[0])
            assert (w != 0).any(dim=1).sum().item() == w.shape[0] - round(p * w.shape[0])


def planted(m=96, n=80, k=8, nnz=300, seed=0):
    """An exact rank-k matrix plus `nnz` sparse entries of magnitude 1-2 (entries of the low-rank part are ~3)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(m, k, generator=g) @ torch.randn(k, n, generator=g)
    index = torch.randperm(m * n, generator=g)[:nnz].sort().values
    sparse = torch.zeros(m * n)
    sparse[index] = (torch.rand(nnz, generator=g) + 1) * torch.randn(nnz, generator=g).sign()
    return low + sparse.view(m, n), index


def test_decomposition_objective_never_increases_and_beats_one_step():
    w, _ = planted(seed=1)
    w = w + 0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(2))  # not exactly decomposable
    _, one = decompose(w, 300, 8, 1, 0)
    index, errors = decompose(w, 300, 8, 10, 0)
    assert len(errors) > 1 and errors[0] == one[0]
    assert all(b <= a + 1e-6 * w.norm() for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * one[0], errors
    assert torch.equal(decompose(w, 300, 8, 10, 0)[0], index)  # deterministic


def test_decomposition_recovers_a_planted_support():
    w, index = planted()
    assert not torch.equal(decompose(w, len(index), 8, 1, 0)[0], index)  # one SVD step is not enough here
    got, errors = decompose(w, len(index), 8, 50, 0)
    assert torch.equal(got, index)
    assert errors[-1] < 1e-5 * w.norm()


def test_default_support_is_the_iterated_decomposition(tmp_path):
    model, method, *_ = make(Row(["peft=dsee", "peft.r=2", f"peft.sparse_n={N}"], r""), tmp_path)
    assert method.spec.decomp_iters == 10
    for mod in method.modules.values():
        assert torch.equal(mod.sparse_index, decompose(mod.base.weight.detach().float(), N, 8, 10, 0)[0])


@pytest.mark.parametrize("p", [0.25, 0.5, 0.75])
def test_head_pruning_removes_exactly_the_requested_heads(tmp_path, p):
    row = Row(["peft=dsee", "peft.r=2", "export=[merge,prune]", "export.prune.how=heads", f"export.prune.sparsity={p}"],
              r"")
    model, method, batch, specs, *_ = make(row, tmp_path)
    train(model, method, batch, steps=1)
    model.eval()
    reference = merge(copy.deepcopy(model))  # unpruned merge, heads masked below
    cfg = model.config
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    group = nh // nkv
    pruned = exported(row, model, method, specs)
    with torch.no_grad():
        unmasked = reference(input_ids=batch["input_ids"]).logits
    for layer, ref in zip(decoder_layers(pruned)[1], decoder_layers(reference)[1]):
        a = layer.self_attn
        o = a.o_proj.weight.view(-1, nh, hd)
        gone = [h for h in range(nh) if not o[:, h].any()]
        assert len(gone) == round(p * nh)
        q = a.q_proj.weight.view(nh, hd, -1)
        assert all(not q[h].any() for h in gone) and all(q[h].any() and o[:, h].any()
                                                         for h in range(nh) if h not in gone)
        for g in range(nkv):  # a KV group is removed exactly when all its query heads are
            dead = set(range(g * group, (g + 1) * group)) <= set(gone)
            for proj in (a.k_proj, a.v_proj):
                assert proj.weight.view(nkv, hd, -1)[g].any() != dead

        def mask(module, args, gone=gone):
            x = args[0].clone()
            x.view(*x.shape[:-1], nh, hd)[..., gone, :] = 0
            return (x,)
        ref.self_attn.o_proj.register_forward_pre_hook(mask)
    with torch.no_grad():
        got = pruned(input_ids=batch["input_ids"]).logits
        want = reference(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, unmasked, atol=1e-3)  # the pruned heads did contribute
