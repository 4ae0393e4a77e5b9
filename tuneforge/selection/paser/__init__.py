"""`selection=paser`: PASER (Post-training dAta Selection for Efficient pruned LLM Recovery; He et al., 2025,
arXiv 2502.12594): the recovery data for a pruned model, chosen where pruning hurt most.

The run's `model` is the PRUNED model (the one recovery training updates); `selection.original` names the
unpruned model it was pruned from (a model preset, configs/model/<name>.yaml, or a Hugging Face directory / hub id /
.gguf, the forms of model.path). Both must share the tokenizer. The selector runs once the model is built:

1. Semantic-structural clustering (paper Sec. 3.1): each sample's embedding is the ORIGINAL model's last hidden
   state mean-pooled over the sample's tokens; `steps.spectral_nmf_clusters` (Gaussian affinity, random-walk
   Laplacian eigenvectors, NMF on their affinity |V V^T|, K = selection.clusters).
2. Capability degradation (Sec. 3.2): CDS(c) = mean over the samples x of c of JSD(x), where JSD(x) is the mean over
   x's positions of JSD(P_original(.|x_<t) || P_pruned(.|x_<t)) (`steps.token_jsd`).
3. Budget (Sec. 3.3): B = keep count (selection.fraction / count), B_c proportional to CDS(c), largest-remainder
   rounding (`steps.allocate`: floors, then one each to the largest fractional parts; sums to B exactly).
4. In-cluster ranking: IES(x) = JSD(x) / log(L(x)^2) (`steps.efficiency`), highest first.
5. Concept consistency (Sec. 3.4): walking clusters from the most degraded, a sample is kept only if its concepts
   are consistent with the concept-consistency graph of the samples already kept (`steps.ConceptGraph`), which
   it then joins (selection.ccg=false turns this off).

Every score goes to <run_dir>/selection/step_0.json: each sample's JSD, cluster and IES, each cluster's CDS and
budget, and the samples the CCG rejected.

Departures from the authors' code (github.com/BokwaiHo/PASER, paser.py), and why:
- Embeddings: the original model's mean-pooled hidden states of the whole sample instead of a downloaded
  SentenceTransformer (all-MiniLM-L6-v2) on the instruction: nothing may need the network.
- Concepts: RAKE-style phrases (maximal runs of content words between stopwords, punctuation and numbers; a small
  stopword list in steps.py) instead of rake-nltk, which needs nltk's downloaded data. Every concept of a kept
  sample becomes a vertex (the reference adds vertices only through edges, so a one-concept sample adds none).
- JSD(x) is the mean over positions (the reference sums over positions of the instruction): a per-token
  degradation, so CDS does not grow with sample length; IES's cost C(x) = L^2 counts the sample's tokens (the
  reference adds input tokens and output characters).
- Budget rounding: largest remainder (the reference's int() floors, so its budgets sum to less than B). The
  budget a cluster cannot spend (too few samples, or CCG rejections) goes to the remaining samples of all
  clusters by IES, still under the CCG (the reference drops it); if the CCG still rejects, fewer than B are kept.
- The sigma of the affinity is the median of the off-diagonal distances (the reference includes the zero
  diagonal); eigenvectors come from the symmetric normalized form (the reference calls eigsh, a symmetric
  solver, on the non-symmetric I - D^-1 A); NMF starts from NNDSVDa (deterministic) instead of random.
- The pruned model: the run's `model` after its `prune` stage (`prune=wanda` etc., which runs when the model is
  built, before the selector), or a model pruned beforehand (`tuneforge prune`, then `model.path=DIR`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tuneforge.config.spec import Spec, knob, positive
from tuneforge.registry import register
from tuneforge.selection import Selector, record


@dataclass
class PaserSelectionSpec(Spec):
    name: str = knob("paser", "PASER: recovery data for a pruned model, where pruning degraded it most")
    original: Optional[str] = knob(None, "the unpruned model the run's (pruned) `model` came from: a model preset "
                                         "(configs/model/<name>.yaml) or a Hugging Face directory / hub id / .gguf")
    fraction: float = knob(0.5, "share of the training samples kept (ignored when count > 0)")
    count: int = knob(0, "number of samples kept, B (0: use fraction)")
    clusters: int = knob(8, "K, the number of semantic clusters")
    ccg: bool = knob(True, "reject samples whose concepts conflict with the concept-consistency graph")
    batch_size: int = knob(4, "samples per scoring forward pass (both models)")

    def problems(self):
        out = [] if 0 < self.fraction <= 1 else [f"fraction={self.fraction} must be in (0, 1]"]
        if not self.original:
            out.append("original=null: PASER compares the run's pruned model with the unpruned one it came from: "
                       "set selection.original=<model preset, e.g. smollm2_135m, or a Hugging Face directory>")
        return out + positive(self, "count", allow_zero=True) + positive(self, "clusters", "batch_size")

    def cross_problems(self, specs):
        out = []
        m, pruned = specs.get("model"), getattr(specs.get("prune"), "name", "none") != "none"
        if self.original and m is not None and same_weights(original_spec(self.original), m) and not pruned:
            out.append(f"selection.original={self.original} is the run's own model and the run prunes nothing: "
                       "every divergence would be 0; prune in the run (prune=wanda prune.sparsity=0.5) or point "
                       "`model` at a pruned model (model.path=DIR, from `tuneforge prune`)")
        if self.original:
            from tuneforge.config.compose import options
            from tuneforge.config.schema import ModelSpec
            from tuneforge.models.load import preflight
            from tuneforge.resources import looks_local

            presets = options("model")
            if self.original not in presets and "/" not in self.original and not looks_local(self.original):
                out.append(f"selection.original={self.original} is neither a model preset ({', '.join(presets)}) "
                           "nor a path: name a preset or a Hugging Face directory")
            elif self.original not in presets:  # a path: does it exist (hub ids are checked when loaded)
                out += [p.replace("model.path", "selection.original", 1)
                        for p in preflight(ModelSpec(name="original", path=self.original))]
        return out


def same_weights(original, model) -> bool:
    """Whether two ModelSpecs load the same weights: the same path, or (random-init presets, no path) the same
    preset. Not the name alone: model.path=DIR (a pruned copy) keeps the preset's name."""
    return original.path == model.path if original.path else (not model.path and original.name == model.name)


def original_spec(ref: str):
    """The ModelSpec of `selection.original`: a preset from configs/model/, else a path / hub id."""
    from omegaconf import OmegaConf

    from tuneforge.config.compose import config_dirs, options
    from tuneforge.config.schema import ModelSpec

    if ref in options("model"):
        node = OmegaConf.merge(OmegaConf.structured(ModelSpec), OmegaConf.load(config_dirs()[0] / "model" / f"{ref}.yaml"))
        return OmegaConf.to_object(node)
    return ModelSpec(name="original", path=ref)


@register("selection", "paser", config=PaserSelectionSpec)
class Paser(Selector):
    needs_model = True

    def select(self, samples, ctx):
        from tuneforge.selection.paser.run import paser_select

        chosen, report = paser_select(self.spec, samples, ctx)
        record(ctx.run_dir, 0, chosen, report.pop("jsd"), **report)
        return chosen
