"""DSEE's defining properties: the sparse part's support is fixed and only its values change; by default it is the
reference's GreBsmo support (checked against the reference procedure written out below from its equations), saved
in the run directory and read back by a rebuild; the `residual` rule's fixed-rank decomposition never increases its
objective and recovers a planted sparse support; the pruned export (export=[merge,prune]) reaches the requested
sparsity exactly, per matrix or globally; head pruning removes whole heads."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.contracts.test_peft_family import TINY, Row, make, train
from tuneforge.config.compose import compose, export_stages
from tuneforge.config.run import Run
from tuneforge.export.base import ExportContext, run_stages
from tuneforge.models.layers import decoder_layers
from tuneforge.models.load import load_tokenizer
from tuneforge.peft.adapters import merge
from tuneforge.peft.base import MethodContext
from tuneforge.peft.dsee.apply import CACHE
from tuneforge.peft.dsee.layer import decompose, grebsmo, one_thread_if_small
from tuneforge.runner.model import build

N = 16


def exported(row, model, method, specs):
    """The row's export stages run in memory on the trained model (what `tuneforge export` runs before saving)."""
    return run_stages(model, export_stages(compose([*TINY, *row.overrides])), ExportContext(method, specs))


def test_sparse_support_is_fixed_and_only_it_changes(tmp_path):
    model, method, batch, *_ = make(Row(["peft=dsee", "peft.r=2", f"peft.sparse_n={N}", "peft.support=residual",
                                         "peft.decomp_iters=1"], r""), tmp_path)
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
    assert set(m.sparse_index.tolist()) != set(torch.topk(w.abs().flatten(), N).indices.tolist())  # not magnitude


def reference_grebsmo(w, iters, step, tau, seed):
    """The DSEE reference's GreBsmo (run_glue.py), written out: V_0 ~ N(0, 1) (1 x n); per rank increment, S = 0
    and two sweeps of U = qr((W - S) V^T).Q, V = U^T (W - S), S = H_tau(W - U V); then V gains the first `step`
    rows of R in qr(E), E = W - U V - S, while the rank stays below min(m, n). Returns (S, U V)."""
    v = torch.randn(1, w.shape[1], generator=torch.Generator().manual_seed(seed))
    for t in range(iters):
        s = torch.zeros_like(w)
        for _ in range(2):
            u = torch.linalg.qr((w - s) @ v.T).Q
            v = u.T @ (w - s)
            s = w - u @ v
            s[s.abs() < tau] = 0
        if t < iters - 1 and v.shape[0] + step < min(w.shape):
            v = torch.cat([v, torch.linalg.qr(w - u @ v - s).R[:step]])
    return s, u @ v


@pytest.mark.parametrize("shape,iters", [((48, 40), 3), ((48, 40), 6), ((20, 40), 6), ((40, 20), 10)])
def test_grebsmo_support_is_the_largest_entries_of_the_thresholded_residual(shape, iters):
    """S is H_tau(W - U V) for the reference's rank-growing fit U V (to float precision), and the support is its N
    largest |.|; where S has fewer than N nonzeros (narrow matrices at high rank), the N largest |W - U V|."""
    w = 0.02 * torch.randn(*shape, generator=torch.Generator().manual_seed(3))  # |entries| ~ tau: it matters
    want_s, low = reference_grebsmo(w, iters, 5, 0.01, seed=7)
    index, s, rank = grebsmo(w, N, iters, 5, 0.01, seed=7)
    torch.testing.assert_close(s, want_s, rtol=0, atol=1e-6)
    assert rank == min(1 + 5 * (iters - 1), 1 + 5 * ((min(shape) - 2) // 5))  # grows by 5, stays below full rank
    by = want_s if (want_s != 0).sum() >= N else w - low
    assert set(index.tolist()) == set(torch.topk(by.abs().flatten(), N).indices.tolist())


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


def test_default_support_is_grebsmo_saved_in_the_run_and_read_back(tmp_path):
    """The default rule is the reference's (100 rank increments of 5, tau 0.01); the support is written to the run
    directory and a rebuild (resume, eval, export) reads it instead of recomputing; other knobs recompute."""
    row = Row(["peft=dsee", "peft.r=2", f"peft.sparse_n={N}"], r"")
    model, method, *_, ctx = make(row, tmp_path)
    s = method.spec
    assert (s.support, s.decomp_iters, s.decomp_step, s.decomp_threshold) == ("grebsmo", 100, 5, 0.01)
    for i, mod in list(enumerate(method.modules.values()))[::5]:  # q_proj, gate_proj, ... of both layers
        w = mod.base.weight.detach()
        with one_thread_if_small(w):
            assert torch.equal(mod.sparse_index, grebsmo(w, N, 100, 5, 0.01, ctx.seed * 1_000_003 + i)[0])
    saved = load_file(str(tmp_path / CACHE))
    assert saved.keys() == method.modules.keys()
    with safe_open(str(tmp_path / CACHE), "pt") as f:
        meta = json.loads(f.metadata()["knobs"])
    planted = {n: torch.arange(N) * 3 for n in saved}  # a support no rule would choose
    save_file(planted, str(tmp_path / CACHE), metadata={"knobs": json.dumps(meta, sort_keys=True)})
    _, rebuilt, *_ = make(row, tmp_path)
    assert all(torch.equal(mod.sparse_index, planted[n]) for n, mod in rebuilt.modules.items())
    _, other, *_ = make(Row([*row.overrides, "peft.decomp_iters=3"], r""), tmp_path)
    assert not any(torch.equal(mod.sparse_index, planted[n]) for n, mod in other.modules.items())


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


def test_a_run_from_before_grebsmo_rebuilds_with_its_own_rule(tmp_path):
    """Runs made before `support=grebsmo` existed have `support: residual` (rank 8, 10 iterations) in their
    config.yaml and no grebsmo knobs: they load, and rebuild the support they trained on (no saved support)."""
    cfg = compose([*TINY, "peft=dsee", "peft.r=2", f"peft.sparse_n={N}"])
    old = OmegaConf.to_container(cfg)
    old["peft"].update(support="residual", decomp_iters=10)
    for knob in ("decomp_step", "decomp_threshold"):
        del old["peft"][knob]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    specs = Run.load(tmp_path).specs
    assert (specs["peft"].support, specs["peft"].decomp_rank, specs["peft"].decomp_iters) == ("residual", 8, 10)
    tok = load_tokenizer(specs["model"])
    _, method = build(specs, tok, MethodContext(seed=specs["trainer"].seed, tokenizer=tok, run_dir=tmp_path,
                                                specs=specs))
    for mod in method.modules.values():
        w = mod.base.weight.detach().float()
        assert torch.equal(mod.sparse_index, decompose(w, N, 8, 10, 0)[0])
