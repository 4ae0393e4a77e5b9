"""DSEE's defining properties: the sparse part's support is fixed (chosen from a low-rank + sparse decomposition
of W) and only its values change; the pruned export reaches the requested sparsity exactly."""

from __future__ import annotations

import pytest
import torch

from tests.contracts.test_peft_family import Row, make, train
from tuneforge.peft.dsee.layer import support

N = 16


def test_sparse_support_is_fixed_and_only_it_changes(tmp_path):
    model, method, batch, *_ = make(Row(["peft=dsee", "peft.r=2", f"peft.sparse_n={N}"], r""), tmp_path)
    m = next(iter(method.modules.values()))
    w = m.base.weight.detach().clone()
    u, s, v = torch.linalg.svd(w)
    residual = (w - (u[:, :8] * s[:8]) @ v[:8]).abs().flatten()  # the paper's decomposition, exact SVD here
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
    model, method, batch, *_ = make(Row(["peft=dsee", "peft.r=2", f"peft.prune={how}", f"peft.prune_sparsity={p}"], r""),
                                    tmp_path)
    train(model, method, batch, steps=1)
    names = list(method.modules)
    merged = method.merged(model)
    for n in names:
        w = merged.get_submodule(n).weight
        if how == "unstructured":
            assert (w == 0).sum().item() == round(p * w.numel())
        else:
            assert (w == 0).all(dim=1).sum().item() == round(p * w.shape[0])
            assert (w != 0).any(dim=1).sum().item() == w.shape[0] - round(p * w.shape[0])
