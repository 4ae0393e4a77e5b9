"""`peft=lst`: Ladder Side-Tuning (Sung, Cho & Bansal, NeurIPS 2022, arXiv 2206.06522). Not in Hugging Face PEFT:
this is tuneforge's own implementation, the decoder-only analogue of the authors' T5 code (ylsung/Ladder-Side-Tuning;
equations and line-by-line correspondence in `layer.py` and `prune.py`).

A side network of the backbone's own block type, r times narrower (`peft.reduction`, paper: r = 8), reads the
frozen backbone's layer outputs through learned down-projections ("ladders") mixed by gates
mu_k = sigmoid(alpha_k / T) (T = `peft.temperature`, paper: 0.1). As in the paper (the authors' merge_last=False),
the LM head reads the side network's up-projected output. The backbone runs under torch.no_grad():
nothing of it is kept for backward, which is LST's memory advantage over adapters/LoRA (whose gradients must flow
back through every backbone layer). Trained: ladders, gates, side blocks, side norm, up-projection.

Layer dropping (Sec. 3.2): side blocks only for some backbone layers (`peft.drop_every`, default 4: the authors'
T5-base setting, which drops layers 1, 5, 9 of 12; or `peft.side_layers`). Side blocks start from the backbone
pruned by Fisher information on training samples (`peft.init=fisher`, the authors' fisher-v2; `prune.py`), by weight
magnitude (`magnitude`), or from the family's random init (`random`).

Fisher needs training batches before the engine exists: they come from the method context (`ctx.train_samples`,
the same door CorDA's calibration uses). With several ranks rank 0 computes the selection and broadcasts it. The
selection is cached in <run_dir>/lst/ (keyed by the settings it depends on): a resume, `tuneforge eval` and
`tuneforge export` rebuild the same side network without training samples.

Export: LST does not merge into the backbone's weights, so `tuneforge export` writes `export/lst/`
(`side.safetensors` + `lst.json`) beside the tokenizer; `Lst.load_export(base, export_dir)` (or
`tuneforge.peft.lst.apply.attach`) puts the side network on a freshly loaded base model.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from tuneforge.distributed import dist
from tuneforge.errors import InputError
from tuneforge.models.layers import unwrap
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.lst.layer import LadderDecoder, SideNetwork, shape_problems
from tuneforge.peft.lst.prune import fisher_scores, init_from_backbone, magnitude_scores, select
from tuneforge.peft.lst.spec import LstSpec
from tuneforge.registry import register

EXPORT_DIR = "lst"
ROPE_KEY = "rotary_emb.inv_freq"  # a non-persistent buffer: exported explicitly (pruned init sets it)


def decoder_slot(base: nn.Module) -> tuple[str, nn.Module]:
    """(attribute name, module) of the decoder inside a causal LM (`model` for the Llama family)."""
    decoder = base.get_decoder()
    for name, child in base.named_children():
        if child is decoder and all(hasattr(decoder, a) for a in ("layers", "norm", "rotary_emb")):
            return name, decoder
    raise InputError([f"peft=lst needs a Llama-family decoder (layers, norm, rotary_emb); {type(base).__name__} "
                      "has none: use peft=lora"])


def attach(model: nn.Module, spec: LstSpec, seed: int = 0, selection: dict | None = None) -> nn.Module:
    """Freeze `model` and put a side network (initialized under `seed`, then from the backbone's sub-matrices
    named by `selection` if given) beside its decoder."""
    base = unwrap(model)
    name, decoder = decoder_slot(base)
    layers = spec.kept_layers(decoder.config.num_hidden_layers)
    problems = shape_problems(decoder.config, spec.reduction, layers)
    if problems:
        raise InputError(problems)
    for p in base.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        side = SideNetwork(decoder, spec.reduction, spec.temperature, spec.gate_init, layers)
    if selection is not None:
        init_from_backbone(side, decoder, selection)
    side.to(next(decoder.parameters()).device)
    setattr(base, name, LadderDecoder(decoder, side))
    return model


def side_of(model: nn.Module) -> SideNetwork:
    return next(m for m in unwrap(model).modules() if isinstance(m, SideNetwork))


@register("peft", "lst", config=LstSpec)
class Lst(TuningMethod):
    hf_export = False

    def __init__(self, spec):
        super().__init__(spec)
        self.selection: dict | None = None  # what pruned init kept (residual dims, RoPE pairs, per-layer units)

    @staticmethod
    def check_model(spec: LstSpec, config) -> list[str]:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        if not all(hasattr(text, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads")):
            return [f"peft=lst needs a Llama-family decoder; {getattr(config, 'model_type', 'this model')} is not one"]
        return shape_problems(text, spec.reduction, spec.kept_layers(text.num_hidden_layers))

    def apply(self, model, ctx):
        s = self.spec
        if s.init != "random":
            base = unwrap(model)
            _, decoder = decoder_slot(base)
            layers = s.kept_layers(decoder.config.num_hidden_layers)
            problems = shape_problems(decoder.config, s.reduction, layers)
            if problems:
                raise InputError(problems)
            self.selection = self.select(base, decoder, layers, ctx)
        return attach(model, s, ctx.seed, self.selection)

    def select(self, base, decoder, layers, ctx) -> dict:
        """The pruning selection: from the run's cache, or computed (Fisher: on rank 0, then broadcast)."""
        s, log = self.spec, ctx.log or (lambda *_: None)
        if s.init == "magnitude":
            return select(decoder.config, magnitude_scores(decoder, layers), s.reduction, layers)
        cache = Path(ctx.run_dir) / EXPORT_DIR / f"fisher_{self.fingerprint(ctx)}.json" if ctx.run_dir else None
        if cache is not None and dist.broadcast_object(cache.is_file()):  # rank 0's view: one branch for all ranks
            log(f"lst: pruning selection from cache {cache}")
            return json.loads(cache.read_text())
        if not ctx.train_samples:
            raise InputError([f"peft=lst (init=fisher): no training samples and no cached selection in "
                              f"{ctx.run_dir}/{EXPORT_DIR}: train the run first (eval/export reuse its cache)"])
        sel = None
        if dist.is_main():
            pool = list(ctx.train_samples)
            random.Random(ctx.seed).shuffle(pool)
            samples = pool[: s.fisher_samples]
            log(f"lst: Fisher information on {len(samples)} training samples, {len(layers)} layers")
            device = "cuda" if torch.cuda.is_available() else None  # as the reference: on the GPU if there is one
            sel = select(decoder.config, fisher_scores(base, samples, layers, log, device), s.reduction, layers)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(sel))
        return dist.broadcast_object(sel)

    def fingerprint(self, ctx) -> str:
        """What the Fisher selection depends on: a cache built for other settings is never reused."""
        key = {"peft": asdict(self.spec), "seed": ctx.seed,
               **{k: asdict(ctx.specs[k]) for k in ("model", "data") if k in ctx.specs}}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def merged(self, model):
        raise NotImplementedError("peft=lst does not merge into the backbone: `tuneforge export` writes export/lst/")

    def export(self, model, out: Path) -> None:
        from safetensors.torch import save_file

        path = Path(out) / EXPORT_DIR
        path.mkdir(parents=True, exist_ok=True)
        side = side_of(model)
        state = {k: v.detach().cpu().contiguous() for k, v in side.state_dict().items()}
        state[ROPE_KEY] = side.rotary_emb.inv_freq.detach().cpu().contiguous()
        save_file(state, str(path / "side.safetensors"))
        s = self.spec
        (path / "lst.json").write_text(json.dumps({
            "peft": "lst", "reduction": s.reduction, "temperature": s.temperature, "gate_init": s.gate_init,
            "init": s.init, "side_layers": side.layer_ids, "arxiv": "2206.06522"}, indent=2))

    @staticmethod
    def load_export(base: nn.Module, out: Path) -> nn.Module:
        """The exported LST model: `base` (the run's base model, loaded plainly) with the trained side network."""
        from safetensors.torch import load_file

        path = Path(out) / EXPORT_DIR
        meta = json.loads((path / "lst.json").read_text())
        state = load_file(str(path / "side.safetensors"))
        if "side_layers" not in meta:
            raise InputError([f"{path} was exported by an earlier LST (the LM head read the backbone's hidden state "
                              "plus the side output): it does not load into this one"])
        spec = LstSpec(reduction=meta["reduction"], temperature=meta["temperature"], gate_init=meta["gate_init"],
                       side_layers=meta["side_layers"], init="random")  # every weight (and RoPE) comes from the file
        model = attach(base, spec)
        side = side_of(model)
        with torch.no_grad():
            if ROPE_KEY in state:
                side.rotary_emb.inv_freq.copy_(state.pop(ROPE_KEY))
                side.rotary_emb.original_inv_freq.copy_(side.rotary_emb.inv_freq)
        side.load_state_dict(state)
        return model
