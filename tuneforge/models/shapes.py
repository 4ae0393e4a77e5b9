"""A model's shapes before any weight loads, for the tuning methods' model-shape checks.

`describe(config)` builds the model on the meta device from its config (the config comes from
models.load.peek_config: `config.json` of a local directory, the `arch` of a random model, or a hub preset's
`model.card`), so the layers, their linears and the attention geometry are known without a byte of weights.
A method's `check_model(spec, config)` asks it which linears its `target_modules` select (the same resolver,
models.targets, that applies the method) and states its constraints with the helpers below; each problem names
the key and a value that works:

    peft.r=128 exceeds the 32 output features of model.layers.0.self_attn.k_proj: set peft.r <= 32
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int


@dataclass
class ModelShape:
    config: Any  # the text config (a multimodal model's language part)
    model: Any  # the model on the meta device: shapes only
    n_layers: int

    def linears(self, names) -> list[Linear]:
        """The linears `names` selects (ValueError when none), as models.targets resolves them."""
        from tuneforge.models.targets import target_linears

        return [Linear(q, m.in_features, m.out_features) for q, m in target_linears(self.model, names)]

    def layers(self):
        from tuneforge.models.layers import decoder_layers

        return decoder_layers(self.model)[1]


_CACHE: dict[str, ModelShape] = {}


def describe(config) -> ModelShape | None:
    """The model's shape (cached per config); None if it cannot be built from the config alone (e.g. remote code)."""
    key = config.to_json_string()
    if key not in _CACHE:
        import torch
        from transformers import AutoModelForCausalLM

        from tuneforge.models.layers import decoder_layers

        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
            n = len(decoder_layers(model)[1])
        except (ValueError, KeyError, TypeError, ImportError, OSError):
            return None
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        if len(_CACHE) > 4:
            _CACHE.clear()
        _CACHE[key] = ModelShape(text, model, n)
    return _CACHE[key]


def targets(shape: ModelShape, names) -> tuple[list[Linear], list[str]]:
    """(the linears `peft.target_modules`=names selects, [the problem] if it selects none)."""
    try:
        return shape.linears(names), []
    except ValueError as e:
        return [], [f"peft.{e.args[0]}"]


SIDES = {"in": ("in_features", "input"), "out": ("out_features", "output")}


def _widths(linears: list[Linear], sides) -> list[tuple[int, str, str]]:
    """(width, 'input'|'output', linear name) in model order."""
    return [(getattr(lin, SIDES[s][0]), SIDES[s][1], lin.name) for lin in linears for s in sides]


def at_most_features(key: str, value: int, linears: list[Linear], sides=("in", "out")) -> list[str]:
    """`key`=value must not exceed the in (and/or out) features of any linear; names the first narrowest one."""
    widths = _widths(linears, sides)
    if not widths or value <= min(w for w, _, _ in widths):
        return []
    bound, what, name = min(widths, key=lambda w: w[0])
    return [f"{key}={value} exceeds the {bound} {what} features of {name}: set {key} <= {bound}"]


def divides_features(key: str, value: int, linears: list[Linear], sides=("in", "out")) -> list[str]:
    """`key`=value must divide the in (and/or out) features of every linear; suggests the largest value that does."""
    widths = _widths(linears, sides)
    bad = [w for w in widths if w[0] % value]
    if not bad:
        return []
    g = math.gcd(*(w for w, _, _ in widths))
    fit = max(d for d in range(1, min(g, value) + 1) if g % d == 0)
    width, what, name = bad[0]
    others = len({n for _, _, n in bad}) - 1
    more = f" (and {others} more linear{'s' if others > 1 else ''})" if others else ""
    return [f"{key}={value} does not divide the {width} {what} features of {name}{more}: set {key} to a divisor "
            f"of {g}, e.g. {key}={fit}"]
