"""The plan of a run: its per-rank memory (estimate.py), whether it fits one device of `plan.gpu_mem` on
`plan.gpus` ranks, and otherwise the cheapest change that fits.

Changes and their cost (a rough throughput loss, summed when several combine; docs/planning.md):

    zero stage 1 / 2 / 3        0.00 / 0.02 / 0.15   (ranks share states, then gradients, then weights; CPU offload needs >= 1)
    halve the micro-batch       0.05 per halving     (grad_accum doubles: the global batch stays)
    gradient checkpointing      0.33                 (one more forward of every block)
    LISA gamma - 1              0.10 per layer       (fewer layers trained at a time: a change of method)
    offload optimizer to CPU    0.50                 (ZeRO-Offload: the step runs on the CPU)
    offload parameters to CPU   1.00                 (ZeRO-Infinity: weights stream in every step)
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass, field

from tuneforge.config.schema import parse_bytes
from tuneforge.plan.estimate import Setting, Shape, breakdown

HEADROOM = 0.9  # usable share of a device: the rest is the CUDA context, allocator fragmentation, kernel workspace
STAGE_COST = {0: 0.0, 1: 0.0, 2: 0.02, 3: 0.15}
HALVING_COST, CHECKPOINT_COST, GAMMA_COST, OFFLOAD_OPT_COST, OFFLOAD_PARAM_COST = 0.05, 0.33, 0.10, 0.5, 1.0


@dataclass
class Plan:
    setting: Setting
    terms: dict
    budget: int  # bytes of one device
    budget_source: str
    fits: bool
    proposal: dict | None = None  # {"overrides": [...], "cost": float, "peak_bytes": int}
    notes: list = field(default_factory=list)
    shape_sizes: list = field(default_factory=list, repr=False)  # elements of every distinct parameter

    @property
    def peak(self) -> float:
        return self.terms["peak"]

    def summary(self) -> str:
        """One line: the predicted peak against the budget, and the fix when it does not fit."""
        s = self.setting
        what = (f"plan: peak {gb(self.peak)} per rank ({s.world} rank(s), ZeRO-{s.stage}, micro-batch "
                f"{s.micro_batch} x {s.seq_len} tokens{', checkpointing' if s.checkpointing else ''}) of "
                f"{gb(self.budget)} ({self.budget_source})")
        if self.fits:
            return f"{what}: fits"
        if self.proposal:
            return (f"{what}: does NOT fit; cheapest fix: {' '.join(self.proposal['overrides'])} "
                    f"(peak {gb(self.proposal['peak_bytes'])})")
        return f"{what}: does NOT fit, and no change tuneforge plans for makes it fit (more ranks or a bigger device)"

    def to_json(self) -> dict:
        s = dataclasses.asdict(self.setting)
        s["peft"] = self.setting.peft.name
        return {"peak_bytes": int(self.peak), "fits": self.fits, "budget_bytes": self.budget,
                "budget_source": self.budget_source,
                "terms": {k: (int(v) if isinstance(v, float) else v) for k, v in self.terms.items()},
                "setting": s, "proposal": self.proposal, "notes": self.notes}


def gb(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def device_budget(spec, ranks_per_node: int) -> tuple[int, str]:
    """Bytes of one device: plan.gpu_mem, or this machine's GPU, or its RAM shared by its ranks."""
    if spec.gpu_mem != "auto":
        return parse_bytes(spec.gpu_mem), f"plan.gpu_mem={spec.gpu_mem}"
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"this machine's {props.name}"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // max(ranks_per_node, 1), f"this machine's RAM / {ranks_per_node} rank(s)"


def make_plan(specs: dict, config, world: int, ranks_per_node: int) -> Plan:
    """The plan for `world` ranks (plan.gpus overrides it) of the run described by `specs`."""
    ps = specs["plan"]
    world = ps.gpus or world
    shape = Shape.of(config)
    setting = Setting.from_specs(specs, world)
    terms = breakdown(specs, shape, setting)
    budget, source = device_budget(ps, ranks_per_node if not ps.gpus else 1)
    fits = terms["peak"] <= HEADROOM * budget
    plan = Plan(setting, terms, budget, source, fits, shape_sizes=shape.sizes)
    if terms["method"] == "":
        plan.notes.append(f"peft={setting.peft.name} declares no trainable estimate: planned as full fine-tuning")
    if not fits:
        plan.proposal = cheapest_fit(specs, shape, setting, HEADROOM * budget)
    return plan


def candidates(s: Setting):
    """(cost, overrides, setting) for every combination of the changes above that differs from `s`."""
    stages = range(s.stage, 4)
    batches, mb = [], s.micro_batch
    while mb >= 1:
        batches.append(mb)
        mb = mb // 2 if mb > 1 else 0
    gammas = list(range(s.peft.gamma, 0, -1)) if hasattr(s.peft, "gamma") and s.peft.name == "lisa" else [None]
    for stage, mb, ckpt, gamma, off_opt, off_par in itertools.product(
            stages, batches, {s.checkpointing, True}, gammas, {s.offload_optimizer, True}, {s.offload_param, True}):
        if (off_opt and stage == 0) or (off_par and stage != 3):
            continue
        over, cost = [], 0.0
        if stage != s.stage:
            over.append(f"zero.stage={stage}")
            cost += STAGE_COST[stage]
        halvings = (s.micro_batch // mb).bit_length() - 1
        if mb != s.micro_batch:
            over += [f"trainer.micro_batch_size={mb}", f"trainer.grad_accum={s.grad_accum * s.micro_batch // mb}"]
            cost += HALVING_COST * halvings
        if ckpt != s.checkpointing:
            over.append("model.gradient_checkpointing=true")
            cost += CHECKPOINT_COST
        peft = s.peft
        if gamma is not None and gamma != s.peft.gamma:
            over.append(f"peft.gamma={gamma}")
            cost += GAMMA_COST * (s.peft.gamma - gamma)
            peft = dataclasses.replace(s.peft, gamma=gamma)
        if off_opt != s.offload_optimizer:
            over.append("zero.offload_optimizer=cpu")
            cost += OFFLOAD_OPT_COST
        if off_par != s.offload_param:
            over.append("zero.offload_param=cpu")
            cost += OFFLOAD_PARAM_COST
        if over:
            yield cost, over, dataclasses.replace(s, stage=stage, micro_batch=mb, checkpointing=ckpt, peft=peft,
                                                  grad_accum=s.grad_accum * s.micro_batch // mb,
                                                  offload_optimizer=off_opt, offload_param=off_par)


def cheapest_fit(specs: dict, shape: Shape, s: Setting, usable: float) -> dict | None:
    best = None
    for cost, over, setting in candidates(s):
        if best is not None and (cost, len(over)) >= (best["cost"], len(best["overrides"])):
            continue
        peak = breakdown(specs, shape, setting)["peak"]
        if peak <= usable:
            best = {"overrides": over, "cost": round(cost, 2), "peak_bytes": int(peak)}
    return best


def plan_run(run) -> Plan | None:
    """The plan of a composed run (config.run.Run); None when the model's config is not available offline."""
    from tuneforge.models.load import peek_config

    config = peek_config(run.specs["model"])
    if config is None:
        return None
    return make_plan(run.specs, config, run.world_size, run.ranks_per_node)
