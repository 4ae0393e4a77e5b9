"""Per-parameter optimizer state of a DeepSpeed engine, whatever ZeRO stage or precision it runs.

Methods that change what is trained during a run (LISA switching layers; SwitchLoRA and TriAdaptLoRA resetting
rows) read the full state of a parameter, rebuild the engine, and write the state back. The state of a
parameter is its per-element optimizer states (every tensor the optimizer keeps in the parameter's shape: the
Adam moments exp_avg and exp_avg_sq, and ElementStepAdamW's element_step), its fp32 master copy where the engine
keeps one ('fp32'), and the Adam step of its parameter group ('step').

Engines:
- plain: ZeRO-0 with fp32 weights; the optimizer (torch AdamW, bitsandbytes 8-bit, ...) holds per-parameter
  state directly, copied as is.
- unfused: ZeRO-0 with bf16/fp16 weights (DeepSpeed's FP16_UnfusedOptimizer): one fp32 master tensor per
  parameter, whose optimizer state is per-parameter too.
- zero12 / zero3 / bf16: ZeRO stages 1-2, stage 3, and DeepSpeed's bf16 engine at stage 0 keep flat fp32
  partitions; a parameter's full state is assembled and scattered with DeepSpeed's
  safe_get/set_full_fp32_param and safe_get/set_full_optimizer_state (collectives: every rank calls them, in
  the same order); DeepSpeed links every tensor of a flat partition's state that has the partition's shape to
  per-parameter fragments, so any per-element key travels like the moments. Adam states are created lazily by
  the first optimizer step; `materialize()` creates them (zeros, step 0, exactly what the optimizer's first step
  would: its `fresh_state(flat)` where it has one) so a fresh engine can be written to before it steps.

This module relies on DeepSpeed 0.19 internals (flat-partition attribute names); tests cover every stage.
"""

from __future__ import annotations

import copy

import torch

MOMENTS = ("exp_avg", "exp_avg_sq")
SCALARS = ("step", "fp32")  # the keys of a state that are not per-element optimizer states


def elementwise(state: dict, numel: int) -> list[str]:
    """The per-element optimizer states in `state` (a state taken by `get`, or an optimizer's own state of a
    tensor of `numel` elements): moments, per-element step counts."""
    return [k for k, v in state.items() if k not in SCALARS and torch.is_tensor(v) and v.numel() == numel]


def kind(engine) -> str:
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    opt = engine.optimizer
    if isinstance(opt, DeepSpeedZeroOptimizer_Stage3):
        return "zero3"
    if isinstance(opt, DeepSpeedZeroOptimizer):
        return "zero12"
    if isinstance(opt, BF16_Optimizer):
        return "bf16"
    if isinstance(opt, FP16_UnfusedOptimizer):
        return "unfused"
    if isinstance(opt, torch.optim.Optimizer):
        return "plain"
    raise NotImplementedError(f"per-parameter optimizer state is not supported for {type(opt).__name__}")


def _flats(engine) -> list[torch.Tensor]:
    opt, k = engine.optimizer, kind(engine)
    if k == "zero3":
        return list(opt.fp32_partitioned_groups_flat)
    if k == "zero12":
        return list(opt.single_partition_of_fp32_groups)
    return list(opt.fp32_groups_flat_partition)


def _flat_of(engine, p) -> torch.Tensor:
    opt, k = engine.optimizer, kind(engine)
    if k == "zero3":
        return opt.fp32_partitioned_groups_flat[opt.grad_position[opt.get_param_id(p)][0]]
    groups = opt.bit16_groups if k == "zero12" else opt.bf16_groups
    i = next(i for i, g in enumerate(groups) if any(q is p for q in g))
    return _flats(engine)[i]


def _master(engine, p) -> torch.Tensor | None:
    """unfused engines: the fp32 master tensor of parameter `p`."""
    opt = engine.optimizer
    for lp_group, hp_group in zip(opt.fp16_groups, opt.fp32_groups):
        for lp, hp in zip(lp_group, hp_group):
            if lp is p:
                return hp
    return None


def materialize(engine) -> None:
    """Create the lazily-initialised Adam state of every flat partition (zeros, step 0) and (re)link every
    parameter's view of it. DeepSpeed links once, after the first group's step, so with several parameter
    groups the later groups' views are missing until relinked here."""
    if kind(engine) in ("plain", "unfused"):
        return
    opt = engine.optimizer
    inner = opt.optimizer
    fresh = getattr(inner, "fresh_state", None)
    for flat in _flats(engine):
        if not inner.state[flat]:
            inner.state[flat] = fresh(flat) if fresh else {"step": torch.tensor(0.0),
                                                           **{m: torch.zeros_like(flat) for m in MOMENTS}}
    if hasattr(opt, "_hp_optimizer_states_linked"):
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()


def _numel(p) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # a ZeRO-3 parameter holds a partition; ds_numel is the whole


def _step_of(state: dict) -> int:
    s = state.get("step", 0)
    return int(s.item() if torch.is_tensor(s) else s)


def get(engine, p) -> dict | None:
    """The full state of parameter `p` on CPU ({'step', moments, 'fp32'?}), or None if it has none yet."""
    k = kind(engine)
    if k in ("plain", "unfused"):
        master = p if k == "plain" else _master(engine, p)
        opt = engine.optimizer if k == "plain" else engine.optimizer.optimizer
        st = opt.state.get(master) if master is not None else None
        if not st:
            return None
        out = {key: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for key, v in st.items()}
        return out if k == "plain" else {**out, "fp32": master.detach().cpu().clone()}
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    flat = _flat_of(engine, p)
    inner_state = engine.optimizer.optimizer.state.get(flat)
    if not inner_state:
        return None
    materialize(engine)
    out = {"step": _step_of(inner_state), "fp32": safe_get_full_fp32_param(p).detach().cpu().clone()}
    for key in elementwise(inner_state, flat.numel()):
        out[key] = safe_get_full_optimizer_state(p, key).detach().cpu().clone()
    return out


def put(engine, p, state: dict) -> None:
    """Write a state taken by `get` into parameter `p` of (possibly another) engine."""
    k = kind(engine)
    if k in ("plain", "unfused"):
        master = p if k == "plain" else _master(engine, p)
        opt = engine.optimizer if k == "plain" else engine.optimizer.optimizer
        if k == "unfused":
            master.data.copy_(state["fp32"])
        opt.state[master] = {key: (v.to(p.device) if torch.is_tensor(v) else v) for key, v in state.items() if key != "fp32"}
        return
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    materialize(engine)
    flat = _flat_of(engine, p)
    inner = engine.optimizer.optimizer.state[flat]
    keys = elementwise(inner, flat.numel())
    if set(keys) != set(elementwise(state, _numel(p))):
        raise ValueError(f"optimizer state with {sorted(elementwise(state, _numel(p)))} cannot be put into an engine "
                         f"whose optimizer keeps {sorted(keys)}")
    safe_set_full_fp32_param(p, state["fp32"].to(flat.device))
    for key in keys:
        safe_set_full_optimizer_state(p, state[key].to(flat.device), key)
    if torch.is_tensor(inner["step"]):
        inner["step"].fill_(float(state["step"]))
    else:
        inner["step"] = int(state["step"])


def held_numel(engine) -> int:
    """Elements of optimizer state this rank holds: moments (+ fp32 master partitions where kept separately)."""
    k = kind(engine)
    if k == "plain":
        return sum(v.numel() for st in engine.optimizer.state.values() for key, v in st.items()
                   if torch.is_tensor(v) and key != "step")
    inner = engine.optimizer.optimizer
    if k == "unfused":
        masters = sum(hp.numel() for g in engine.optimizer.fp32_groups for hp in g)
        return masters + sum(v.numel() for st in inner.state.values() for key, v in st.items()
                             if torch.is_tensor(v) and key != "step")
    moments = sum(v.numel() for st in inner.state.values() for key, v in st.items() if torch.is_tensor(v) and key != "step")
    return moments + sum(f.numel() for f in _flats(engine))


def held_bytes(engine) -> int:
    """Bytes of optimizer state this rank holds: every tensor of the optimizer's state at its own dtype (moments,
    8-bit or FP8 codes and their scales, step counters) plus the fp32 master copies where the engine keeps them
    apart from the model's weights (bf16/fp16 weights, ZeRO 1-3 partitions)."""
    k = kind(engine)
    inner = engine.optimizer if k == "plain" else engine.optimizer.optimizer
    out = sum(v.numel() * v.element_size() for st in inner.state.values() for v in st.values() if torch.is_tensor(v))
    if k == "unfused":
        return out + sum(hp.numel() * hp.element_size() for g in engine.optimizer.fp32_groups for hp in g)
    return out + (0 if k == "plain" else sum(f.numel() * f.element_size() for f in _flats(engine)))


def has_state(engine, p) -> bool:
    """Whether the engine keeps optimizer state (or an fp32 master partition) for parameter `p`."""
    k = kind(engine)
    if k == "plain":
        return bool(engine.optimizer.state.get(p))
    if k == "unfused":
        return _master(engine, p) is not None
    if k == "zero3":
        opt = engine.optimizer
        return p.requires_grad and hasattr(p, "ds_id") and opt.get_param_id(p) in opt.grad_position
    return getattr(p, "_hp_mapping", None) is not None


# ---------------------------------------------------------------------- snapshot / restore (ZeRO 0-2)
def _counters(obj) -> dict:
    """The scalar attributes of an object (counters, flags, 0-dim tensors such as a grad norm)."""
    return {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in vars(obj).items()
            if isinstance(v, (bool, int, float, str, type(None))) or (torch.is_tensor(v) and v.dim() == 0)}


def _put_counters(obj, saved: dict) -> None:
    for k, v in saved.items():
        setattr(obj, k, v.clone() if torch.is_tensor(v) else v)


def _inner(engine):
    return engine.optimizer if kind(engine) == "plain" else engine.optimizer.optimizer


def _masters(engine) -> list[torch.Tensor]:
    k = kind(engine)
    if k == "plain":
        return []
    if k == "unfused":
        return [hp for g in engine.optimizer.fp32_groups for hp in g]
    return _flats(engine)


def snapshot(engine) -> dict:
    """Everything one optimizer step changes, copied (this rank's part): the trained weights, the fp32 masters,
    every optimizer state tensor and scalar (moments, step counts), the param groups' values (lr), the LR
    schedule, the engine's and the optimizer's counters and flags (global steps, the loss scale, the boundary
    flag), and the random generators. ZeRO-3 is refused: its weights live in partitions re-gathered per use."""
    k = kind(engine)
    if k == "zero3":
        raise NotImplementedError("snapshot/restore is not supported under ZeRO-3 (partitioned weights)")
    inner = _inner(engine)
    opt = engine.optimizer
    wrappers = [engine, opt, inner, getattr(opt, "loss_scaler", None), getattr(opt, "loss_scale_config", None)]
    return {
        "weights": [(p, p.detach().clone()) for p in engine.module.parameters() if p.requires_grad],
        "masters": [(m, m.detach().clone()) for m in _masters(engine)],
        "state": {key: {n: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)) for n, v in st.items()}
                  for key, st in inner.state.items()},
        "groups": [{n: copy.deepcopy(v) for n, v in g.items() if n != "params"} for g in inner.param_groups],
        "schedule": copy.deepcopy(engine.lr_scheduler.state_dict()) if engine.lr_scheduler is not None else None,
        "counters": [(w, _counters(w)) for w in wrappers if w is not None],
        "rng": (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
    }


@torch.no_grad()
def restore(engine, snap: dict) -> None:
    """Put a `snapshot` back, in place: tensors keep their identity (DeepSpeed's fragment views into the flat
    partitions and moments stay valid); optimizer state created since the snapshot is dropped."""
    for p, saved in snap["weights"] + snap["masters"]:
        p.data.copy_(saved)
    inner = _inner(engine)
    for key in [key for key in inner.state if key not in snap["state"]]:
        del inner.state[key]
    for key, saved in snap["state"].items():
        st = inner.state[key]
        for n in [n for n in st if n not in saved]:
            del st[n]
        for n, v in saved.items():
            if torch.is_tensor(v) and torch.is_tensor(st.get(n)) and st[n].shape == v.shape:
                st[n].copy_(v)
            else:
                st[n] = v.clone() if torch.is_tensor(v) else copy.deepcopy(v)
    for group, saved in zip(inner.param_groups, snap["groups"]):
        group.update(copy.deepcopy(saved))
    if snap["schedule"] is not None:
        engine.lr_scheduler.load_state_dict(copy.deepcopy(snap["schedule"]))
    for obj, saved in snap["counters"]:
        _put_counters(obj, saved)
    cpu, cuda = snap["rng"]
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
