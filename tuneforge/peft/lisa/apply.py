"""`peft=lisa`: Layerwise Importance Sampled AdamW (Pan et al., 2024, arXiv 2403.17919).

Algorithm 1 of the paper: for each period i = 0 .. T/K - 1, freeze every middle layer l except a sampled set
(expected size gamma, p_l = gamma / N_L per layer; the embeddings E and head H always train, p_E = p_H = 1),
then run AdamW for K steps on {E, H, sampled layers}. tuneforge samples exactly gamma distinct layers per
period (as the authors' released code does; `sampler.py` has the uniform and the weighted rule), and makes
E, H and the final norm independent `train|freeze` policies.

What makes this LISA and not "requires_grad flipping": the switch owns the optimizer. At each resample the
DeepSpeed engine is rebuilt around the new trainable set, so optimizer state (fp32 master copies, Adam moments,
gradient partitions) exists only for the active layers and the always-trained modules, under every ZeRO stage,
with or without optimizer offload. The state of modules that stay active (E, H, norm, a layer sampled again)
is carried over exactly (`tuneforge.distributed.optim_state`). The state of a layer that leaves the active set
is freed by default (`inactive_state=free`: Adam moments of a layer last trained periods ago are stale, and
keeping them is what makes LISA's memory creep towards full fine-tuning in callback implementations);
`inactive_state=offload` keeps it in CPU memory and restores it when the layer is sampled again.
"""

from __future__ import annotations

import math

from torch import nn

from tuneforge.distributed import dist
from tuneforge.errors import InputError
from tuneforge.models.layers import decoder_layers, layer_of_param, unwrap
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.lisa.sampler import sample
from tuneforge.peft.lisa.spec import LisaSpec
from tuneforge.registry import register


def tie_problem(spec: LisaSpec, tied: bool, model_name: str) -> list[str]:
    if tied and spec.embed != spec.head:
        return [f"peft.embed={spec.embed} and peft.head={spec.head} conflict: {model_name} ties its input embeddings "
                "and LM head (one tensor); set peft.embed and peft.head to the same policy"]
    return []


@register("peft", "lisa", config=LisaSpec)
class Lisa(TuningMethod):
    def __init__(self, spec: LisaSpec):
        super().__init__(spec)
        self.active: list[int] = []
        self.period = 0
        self.ever: set[int] = set()  # layers trained at some point: their weights differ from the base model
        self.stash: dict[str, dict] = {}  # inactive_state=offload: optimizer state of inactive layers (CPU)

    @staticmethod
    def check_model(spec: LisaSpec, config) -> list[str]:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        out = tie_problem(spec, bool(getattr(text, "tie_word_embeddings", False)), getattr(config, "model_type", "the model"))
        n = getattr(text, "num_hidden_layers", None)
        if n is not None and spec.gamma > n:
            out.append(f"peft.gamma={spec.gamma} exceeds the model's {n} layers: set peft.gamma <= {n}")
        return out

    # ------------------------------------------------------------------ structure
    def apply(self, model: nn.Module, ctx) -> nn.Module:
        s = self.spec
        self.seed, self.model = ctx.seed, model
        base = unwrap(model)
        _, layers = decoder_layers(model)
        emb, head = base.get_input_embeddings(), base.get_output_embeddings()
        tied = head is not None and emb is not None and head.weight is emb.weight
        problems = tie_problem(s, tied, type(base).__name__)
        if s.gamma > len(layers):
            problems.append(f"peft.gamma={s.gamma} exceeds the model's {len(layers)} layers")
        if problems:
            raise InputError(problems)
        owner = layer_of_param(layers)
        embed_ids = {id(p) for m in base.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
        head_ids = {id(head.weight)} if head is not None else set()
        self.layer_names: list[list[str]] = [[] for _ in layers]
        kinds: dict[str, list[str]] = {"embed": [], "head": [], "norm": []}
        for n, p in model.named_parameters():
            if id(p) in owner:
                self.layer_names[owner[id(p)]].append(n)
            else:
                kinds["embed" if id(p) in embed_ids else "head" if id(p) in head_ids else "norm"].append(n)
        self.always = [n for k in ("embed", "head", "norm") if getattr(s, k) == "train" for n in kinds[k]]
        self.active = self._sample(0)
        self._set_trainable()
        return model

    def _set_trainable(self) -> None:
        on = set(self.always) | {n for i in self.active for n in self.layer_names[i]}
        for n, p in self.model.named_parameters():
            p.requires_grad_(n in on)
            if n not in on:
                p.grad = None
        self.ever |= set(self.active)

    def param_groups(self, model):
        params = dict(model.named_parameters())
        groups = [{"params": [params[n] for n in self.always]}] if self.always else []
        return groups + [{"params": [params[n] for n in self.layer_names[i]]} for i in self.active]

    def trained_names(self, model):
        return set(self.always) | {n for i in sorted(self.ever) for n in self.layer_names[i]}

    # ------------------------------------------------------------------ sampling
    def layer_weights(self) -> list[float]:
        """w_l = mean over the layer's weight matrices of ||W||_F / sqrt(numel) (ZeRO-3 shards are summed)."""
        params = dict(self.model.named_parameters())
        sq, numel, owner = [], [], []
        for i, names in enumerate(self.layer_names):
            for n in names:
                p = params[n]
                shape = getattr(p, "ds_shape", p.shape)
                if len(shape) < 2:
                    continue
                local = p.ds_tensor if hasattr(p, "ds_tensor") else p.data
                sq.append(local.detach().float().pow(2).sum().item())
                numel.append(math.prod(shape))
                owner.append(i)
        if any(hasattr(params[n], "ds_tensor") for names in self.layer_names for n in names):
            sq = dist.all_sum(sq)
        per_layer: list[list[float]] = [[] for _ in self.layer_names]
        for s_, k, i in zip(sq, numel, owner):
            per_layer[i].append(math.sqrt(s_ / k))
        return [sum(v) / len(v) if v else 0.0 for v in per_layer]

    def _sample(self, period: int) -> list[int]:
        weights = self.layer_weights() if self.spec.sampling == "weighted" else None
        chosen = sample(self.seed, period, len(self.layer_names), self.spec.gamma, weights)
        return dist.broadcast_object(chosen)

    # ------------------------------------------------------------------ training
    def on_step_start(self, ctx) -> None:
        period = ctx.step // self.spec.period
        if period == self.period:
            return
        self.period = period
        new = self._sample(period)
        if new != self.active:
            self.switch(new, ctx.engine)
            ctx.log(f"lisa: step {ctx.step}: layers {new} (state {self.state_numel(ctx.engine):,} elements)")
        ctx.metrics({"step": ctx.step, "lisa_active": new})

    def switch(self, new: list[int], engine) -> None:
        """Rebuild the engine around the new active set, carrying the state of what stays active."""
        params = dict(self.model.named_parameters())
        old = set(self.active)
        staying = self.always + [n for i in sorted(old & set(new)) for n in self.layer_names[i]]
        carried = {n: engine.state(params[n]) for n in staying}
        if self.spec.inactive_state == "offload":
            leaving = [n for i in sorted(old - set(new)) for n in self.layer_names[i]]
            self.stash.update({n: engine.state(params[n]) for n in leaving})

        def change():
            self.active = new
            self._set_trainable()
            return self.param_groups(self.model)

        engine.rebuild(change)
        engine.materialize()
        returning = {n: self.stash.pop(n) for i in new if i not in old for n in self.layer_names[i] if n in self.stash}
        for n, state in {**carried, **returning}.items():
            if state is not None:
                engine.put_state(params[n], state)

    @staticmethod
    def state_numel(engine) -> int:
        """Optimizer-state elements held across all ranks."""
        return int(dist.all_sum([engine.held_numel()])[0])

    def state_dict(self) -> dict:
        return {"active": list(self.active), "period": self.period, "ever": sorted(self.ever)}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.active, self.period, self.ever = list(state["active"]), int(state["period"]), set(state["ever"])
        self._set_trainable()


def active_layers(model: nn.Module) -> list[int]:
    """Indices of decoder layers with trainable parameters (for tests and reports)."""
    _, layers = decoder_layers(model)
    return [i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())]

