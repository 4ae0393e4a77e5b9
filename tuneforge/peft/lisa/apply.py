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

`sampling=weighted`: importance from measured updates. The paper motivates LISA by the layerwise weight norms
of LoRA and full fine-tuning (Sec. 3.1, Fig. 1-2: how much each layer's weights move is strongly skewed across
layers) and turns them into sampling probabilities (Sec. 3.2); its released code (LMFlow's
DynamicLayerActivationCallback) only ever samples uniformly. tuneforge measures the movement on the run itself:

    r_l = ||W_l(end of period) - W_l(start)||_F / (||W_l(start)||_F * sum of the period's learning rates)
    w_l <- decay * w_l + (1 - decay) * r_l                 (over the layer's weight matrices; first: w_l = r_l)

for each layer active in the period that just ended (`peft.importance_decay`, default 0.5). Layers never
measured weigh the mean of the measured ones (all layers weigh the same before any measurement, so the first
period is uniform and unmeasured layers keep being explored); a layer is then drawn with inclusion probability
exactly gamma * w_l / sum(w), capped at 1 (`sampler.py`). Departures, and why:
- the paper's importance is a fixed profile read off LoRA/full runs (its Algorithm 1 ends up with a uniform
  gamma / N_L for middle layers); here it is estimated online from this run's own periods, because a separate
  LoRA or full run to read it from is what LISA exists to avoid;
- relative (||dW|| / ||W||) rather than absolute norms, so layers of different scale compare; net movement
  over a period rather than summed per-step updates, since Adam makes per-step updates roughly lr per
  coordinate in every layer and only the net movement carries the signal; per unit learning rate, because
  layers measured in different periods must compare across the schedule (measured on SmolLM2 without this
  division, r_l followed the warm-up/cosine schedule, 3e-5..1e-3, while the two layers of one period agreed
  within 10%);
- resume: the estimate and the measurement of the period under way (norms so far, summed learning rates) are saved in the
  method's state (`state_dict`, JSON), not the start-of-period snapshot itself. A resume at a period boundary
  therefore continues exactly; in the middle of a period, the resumed run re-takes the snapshot and adds the
  two parts' norms (exact if the layer moved in one direction, else an upper bound), so that one period's
  measurement, and the draws after it, may differ from the uninterrupted run's.
- the snapshot is a CPU fp32 copy of the active layers' matrices (their local ZeRO-3 partitions): host memory
  of gamma layers, nothing on the accelerator.
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
        self.importance: list[float | None] = []  # sampling=weighted: running estimate per layer (None: unmeasured)
        self.snapshot: dict[int, list] = {}  # sampling=weighted: active layers' local weight matrices at period start
        self.lr_sum = 0.0  # sampling=weighted: learning rates of the steps since the snapshot
        self.pending: dict | None = None  # a measurement in progress, carried through a checkpoint

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
        self.importance = [None] * len(layers)
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
        """Sampling weights: the running estimate of each layer's relative update norm per unit learning rate;
        unmeasured layers weigh the mean of the measured ones (all 1.0 before any measurement)."""
        known = [w for w in self.importance if w is not None]
        prior = sum(known) / len(known) if known else 1.0
        return [prior if w is None else w for w in self.importance]

    def _matrices(self, layer: int) -> list:
        """The layer's weight matrices as this rank holds them (its ZeRO-3 partition, or the full tensor)."""
        params = dict(self.model.named_parameters())
        out = []
        for n in self.layer_names[layer]:
            p = params[n]
            if len(getattr(p, "ds_shape", p.shape)) >= 2:
                out.append(p.ds_tensor if hasattr(p, "ds_tensor") else p.data)
        return out

    def _sharded(self) -> bool:
        return any(hasattr(p, "ds_tensor") for p in self.model.parameters())

    def take_snapshot(self, step: int) -> None:
        """Copy (to CPU) the active layers' weight matrices: the start of this period's measurement."""
        self.snapshot = {i: [t.detach().float().cpu().clone() for t in self._matrices(i)] for i in self.active}
        self.lr_sum = 0.0

    def update_norms(self) -> dict[int, float]:
        """r_l = ||W_l - W_l(snapshot)||_F / ||W_l(snapshot)||_F for each snapshotted layer (ZeRO-3: shards summed)."""
        layers = sorted(self.snapshot)
        sums = []
        for i in layers:
            d2 = n2 = 0.0
            for now, start in zip(self._matrices(i), self.snapshot[i]):
                d2 += (now.detach().float().cpu() - start).pow(2).sum().item()
                n2 += start.pow(2).sum().item()
            sums += [d2, n2]
        if self._sharded():
            sums = dist.all_sum(sums)
        return {i: math.sqrt(sums[2 * k]) / math.sqrt(sums[2 * k + 1]) if sums[2 * k + 1] > 0 else 0.0
                for k, i in enumerate(layers)}

    def progress(self) -> tuple[dict[int, float], float]:
        """This period's measurement so far: relative update norm per active layer, and the sum of the learning
        rates of the steps it covers (a part measured before a resume is carried in `pending` and added: exact
        when the resume was at the period's end, an upper bound (norms add) in its middle)."""
        pend = self.pending or {"norms": {}, "lr_sum": 0.0}
        now = self.update_norms() if self.snapshot else {}
        norms = {int(i): v for i, v in pend["norms"].items()}
        for i, v in now.items():
            norms[i] = norms.get(i, 0.0) + v
        return norms, float(pend["lr_sum"]) + self.lr_sum

    def measure(self) -> dict[int, float]:
        """Fold the period's relative update norms per unit learning rate, r_l / sum(lr), into the running
        estimate (EMA); returns them."""
        norms, lr_sum = self.progress()
        self.snapshot, self.pending = {}, None
        if lr_sum <= 0:
            return {}
        d = self.spec.importance_decay
        r = {i: v / lr_sum for i, v in norms.items()}
        for i, v in r.items():
            old = self.importance[i]
            self.importance[i] = v if old is None else d * old + (1 - d) * v
        return r

    def _sample(self, period: int) -> list[int]:
        weights = self.layer_weights() if self.spec.sampling == "weighted" else None
        chosen = sample(self.seed, period, len(self.layer_names), self.spec.gamma, weights)
        return dist.broadcast_object(chosen)

    # ------------------------------------------------------------------ training
    def on_train_start(self, ctx) -> None:
        if self.spec.sampling == "weighted":
            self.take_snapshot(ctx.step)

    def on_step_start(self, ctx) -> None:
        period = ctx.step // self.spec.period
        if period == self.period:
            self.count_lr(ctx)
            return
        self.period = period
        row = {"step": ctx.step}
        if self.spec.sampling == "weighted":
            measured = self.measure()
            row["lisa_update_norm"] = {str(i): v for i, v in measured.items()}
            row["lisa_importance"] = self.layer_weights()
        new = self._sample(period)
        if new != self.active and ctx.engine is None:  # outside a run: the trainable set only
            self.active = new
            self._set_trainable()
        elif new != self.active:
            self.switch(new, ctx.engine)
            ctx.log(f"lisa: step {ctx.step}: layers {new} (state {self.state_numel(ctx.engine):,} elements)")
        if self.spec.sampling == "weighted":
            self.take_snapshot(ctx.step)
            self.count_lr(ctx)
        ctx.metrics({**row, "lisa_active": new})

    def count_lr(self, ctx) -> None:
        """Add the learning rate of the step about to run (1.0 per step outside a run)."""
        if self.spec.sampling == "weighted":
            self.lr_sum += float(ctx.engine.lr) if ctx.engine is not None else 1.0

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
        state = {"active": list(self.active), "period": self.period, "ever": sorted(self.ever)}
        if self.spec.sampling == "weighted":  # the estimate, and the measurement of the period under way
            norms, lr_sum = self.progress()  # called between two steps
            state.update(importance=list(self.importance), pending={"norms": {str(i): v for i, v in norms.items()},
                                                                     "lr_sum": lr_sum})
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.active, self.period, self.ever = list(state["active"]), int(state["period"]), set(state["ever"])
        if state.get("importance") is not None:
            self.importance, self.pending = list(state["importance"]), state.get("pending")
        self._set_trainable()


def active_layers(model: nn.Module) -> list[int]:
    """Indices of decoder layers with trainable parameters (for tests and reports)."""
    _, layers = decoder_layers(model)
    return [i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())]

