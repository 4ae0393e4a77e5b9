"""`peft=lst`: Ladder Side-Tuning (Sung, Cho & Bansal, 2022, arXiv 2206.06522). Not in Hugging Face PEFT: this is
tuneforge's own implementation of the paper's Fig. 2 / Sec. 3 (equations in `layer.py`).

A side network of the backbone's own block type, r times narrower (`peft.reduction`, paper: r = 8), reads the
frozen backbone's layer outputs through learned down-projections ("ladders") mixed by gates
mu_i = sigmoid(alpha_i / T) (T = `peft.temperature`, paper: 0.1); its up-projected output is added to the
backbone's final hidden state before the frozen LM head. The backbone runs under torch.no_grad(): nothing of it
is kept for backward, which is LST's memory advantage over adapters/LoRA (whose gradients must flow back through
every backbone layer). Trained: ladders, gates, side blocks, side norm, up-projection; nothing of the backbone.

Side blocks start from the backbone pruned by weight magnitude (`peft.init=pruned`, the paper's Sec. 3.2;
`prune.py`) or from the family's random init (`peft.init=random`); `up` starts at zero either way, so step 0
computes exactly the pretrained model.

Export: LST does not merge into the backbone's weights, so `tuneforge export` writes `export/lst/`
(`side.safetensors` + `lst.json`) beside the tokenizer; `Lst.load_export(base, export_dir)` (or
`tuneforge.peft.lst.apply.attach`) puts the side network on a freshly loaded base model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tuneforge.errors import InputError
from tuneforge.models.layers import unwrap
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.lst.layer import LadderDecoder, SideNetwork, shape_problems
from tuneforge.peft.lst.prune import init_from_backbone
from tuneforge.peft.lst.spec import LstSpec
from tuneforge.registry import register

EXPORT_DIR = "lst"


def decoder_slot(base: nn.Module) -> tuple[str, nn.Module]:
    """(attribute name, module) of the decoder inside a causal LM (`model` for the Llama family)."""
    decoder = base.get_decoder()
    for name, child in base.named_children():
        if child is decoder and all(hasattr(decoder, a) for a in ("layers", "norm", "rotary_emb")):
            return name, decoder
    raise InputError([f"peft=lst needs a Llama-family decoder (layers, norm, rotary_emb); {type(base).__name__} "
                      "has none: use peft=lora"])


def attach(model: nn.Module, spec: LstSpec, seed: int = 0) -> nn.Module:
    """Freeze `model` and put a side network (initialized under `seed`) beside its decoder."""
    base = unwrap(model)
    name, decoder = decoder_slot(base)
    problems = shape_problems(decoder.config, spec.reduction)
    if problems:
        raise InputError(problems)
    for p in base.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        side = SideNetwork(decoder, spec.reduction, spec.temperature, spec.gate_init)
    if spec.init == "pruned":
        init_from_backbone(side, decoder, spec.reduction)
    side.to(next(decoder.parameters()).device)
    setattr(base, name, LadderDecoder(decoder, side))
    return model


def side_of(model: nn.Module) -> SideNetwork:
    return next(m for m in unwrap(model).modules() if isinstance(m, SideNetwork))


@register("peft", "lst", config=LstSpec)
class Lst(TuningMethod):
    hf_export = False

    @staticmethod
    def check_model(spec: LstSpec, config) -> list[str]:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        if not all(hasattr(text, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads")):
            return [f"peft=lst needs a Llama-family decoder; {getattr(config, 'model_type', 'this model')} is not one"]
        return shape_problems(text, spec.reduction)

    def apply(self, model, ctx):
        return attach(model, self.spec, ctx.seed)

    def merged(self, model):
        raise NotImplementedError("peft=lst does not merge into the backbone: `tuneforge export` writes export/lst/")

    def export(self, model, out: Path) -> None:
        from safetensors.torch import save_file

        path = Path(out) / EXPORT_DIR
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in side_of(model).state_dict().items()}
        save_file(state, str(path / "side.safetensors"))
        s = self.spec
        (path / "lst.json").write_text(json.dumps({"peft": "lst", "reduction": s.reduction, "temperature": s.temperature,
                                                    "gate_init": s.gate_init, "init": s.init, "arxiv": "2206.06522"},
                                                   indent=2))

    @staticmethod
    def load_export(base: nn.Module, out: Path) -> nn.Module:
        """The exported LST model: `base` (the run's base model, loaded plainly) with the trained side network."""
        from safetensors.torch import load_file

        path = Path(out) / EXPORT_DIR
        meta = json.loads((path / "lst.json").read_text())
        spec = LstSpec(reduction=meta["reduction"], temperature=meta["temperature"], gate_init=meta["gate_init"],
                       init=meta["init"])  # pruned: the side RoPE frequencies are re-derived from `base`
        model = attach(base, spec)
        side_of(model).load_state_dict(load_file(str(path / "side.safetensors")))
        return model
