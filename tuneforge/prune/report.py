"""The per-layer report: for each pruned linear its sparsity and its relative reconstruction error on the
calibration inputs X,

    error(W^) = ||W X - W^ X||^2 / ||W X||^2 = tr(D G D^T) / tr(W G W^T),   D = W - W^, G = sum x^T x,

`error_before` for the method's first mask applied to the unchanged weights (W * M0) and `error_after` for the
result: equal for magnitude and Wanda; SparseGPT's OBS updates and DSnoT's swaps lower it. Printed as a table and
written as JSON (rows + totals)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch


def error(w: torch.Tensor, w_hat: torch.Tensor, gram: torch.Tensor) -> float:
    d = w - w_hat
    num = ((d @ gram) * d).sum()
    den = ((w @ gram) * w).sum()
    return float(num / den) if den > 0 else 0.0


def row(name: str, w: torch.Tensor, w_hat: torch.Tensor, before: torch.Tensor, stats) -> dict:
    out = {"layer": name, "shape": list(w.shape), "sparsity": float((w_hat == 0).float().mean())}
    if stats is not None and stats.windows:
        out["error_before"] = error(w, before, stats.gram)
        out["error_after"] = error(w, w_hat, stats.gram)
    return out


def summary(rows: list[dict], spec) -> dict:
    zeros = sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in rows)
    total = sum(r["shape"][0] * r["shape"][1] for r in rows)
    return {"method": spec.name, "sparsity": round(zeros) / max(total, 1), "pruned_zeros": round(zeros),
            "pruned_params": total, "pattern": spec.pattern, "scope": spec.scope, "target_sparsity": spec.sparsity,
            "layers": rows}


def table(report: dict):
    """A rich Table of the report (the consoles print it; train.log gets it as text)."""
    from rich.table import Table

    t = Table(title=f"prune={report['method']}: {report['sparsity']:.2%} of {report['pruned_params']:,} weights "
                    f"({report['pattern']}" + (f", scope {report['scope']})" if report["pattern"] == "unstructured" else ")"),
              title_justify="left")
    for col in ("layer", "shape", "sparsity", "error before", "error after"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for r in report["layers"]:  # "model.layers.0.mlp.up_proj" -> "0.mlp.up_proj"
        errs = [f"{r[k]:.4e}" if k in r else "-" for k in ("error_before", "error_after")]
        t.add_row(re.sub(r"^.*?layers\.", "", r["layer"]), "x".join(map(str, r["shape"])), f"{r['sparsity']:.2%}", *errs)
    return t


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


def card(report: dict, model_spec) -> str:
    """The README of a pruned model directory: what was pruned, and how sparse it is."""
    source = model_spec.path or f"{model_spec.name} (random init)"
    return (f"# Pruned with tuneforge (prune={report['method']})\n\n"
            f"- source: {source}\n"
            f"- sparsity: {report['sparsity']:.4%} of the {report['pruned_params']:,} weights of the "
            f"{len(report['layers'])} pruned linear layers are zero ({report['pattern']}, scope {report['scope']}, "
            f"target {report['target_sparsity']})\n"
            f"- whole model: {report.get('model_sparsity', 0):.4%} of all parameters are zero (embeddings, norms "
            "and the head are not pruned)\n"
            "- per-layer sparsity and reconstruction error: sparsity.json\n\n"
            "The zeros are stored as ordinary zeros in the weights (a dense checkpoint).\n")
