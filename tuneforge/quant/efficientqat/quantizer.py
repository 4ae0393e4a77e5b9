"""The uniform asymmetric group-wise quantizer (EfficientQAT Eq. 1-2) and the layer Block-AP trains.

    init_scale_zero(w, bits, g)   s = (max - min) / (2^N - 1), z = -round(min / s) per group (max-min init)
    fake_quant(w, s, z, bits, g)  W^ = (clamp(round(W / s) + round(z), 0, 2^N - 1) - round(z)) * s, rounding
                                  through straight-through estimators
    FakeQuantLinear               W, s, z all trainable (Block-AP); `freeze()` -> models.groupwise.GroupQuantLinear
"""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.models.groupwise import GroupQuantLinear

CLIP = (1e-4, 1e4)  # the reference's clamp of the step size (quantize/quantizer.py)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


def clamp_ste(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (x.clamp(lo, hi) - x).detach() + x


@torch.no_grad()
def init_scale_zero(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, z), each [out, in / group_size], from each group's min and max (z is already an integer)."""
    x = w.float().reshape(w.shape[0], -1, group_size)
    lo, hi = x.amin(-1), x.amax(-1)
    s = ((hi - lo) / (2**bits - 1)).clamp(*CLIP)
    z = (-(lo / s)).clamp(-1e4, 1e4).round()
    return s, z


def codes_of(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Wq = clamp(round(W / s) + round(z), 0, 2^N - 1), [out, in], with straight-through rounding."""
    o = w.shape[0]
    s = clamp_ste(s, *CLIP)[..., None]
    z = clamp_ste(round_ste(z), 0, 2**bits - 1)[..., None]
    q = (round_ste(w.reshape(o, -1, group_size) / s) + z).clamp(0, 2**bits - 1)
    return q.reshape(w.shape)


def fake_quant(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    o = w.shape[0]
    q = codes_of(w, s, z, bits, group_size).reshape(o, -1, group_size)
    zr = clamp_ste(round_ste(z), 0, 2**bits - 1)[..., None]
    return ((q - zr) * clamp_ste(s, *CLIP)[..., None]).reshape(w.shape)


class FakeQuantLinear(nn.Module):
    """A linear computing with fake_quant(W): W (`weight`), s (`scale`) and z (`zero_point`, a real number rounded
    in the forward) are parameters, so Block-AP trains all three. `quantize=False` computes with W itself (the
    full-precision target of the same block)."""

    def __init__(self, linear: nn.Linear, bits: int, group_size: int):
        super().__init__()
        self.bits, self.group_size = bits, group_size
        self.weight = nn.Parameter(linear.weight.detach().float().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        s, z = init_scale_zero(self.weight, bits, group_size)
        self.scale, self.zero_point = nn.Parameter(s), nn.Parameter(z)
        self.quantize = True

    def forward(self, x):
        w = fake_quant(self.weight, self.scale, self.zero_point, self.bits, self.group_size) if self.quantize else self.weight
        return nn.functional.linear(x, w, self.bias)

    @torch.no_grad()
    def freeze(self) -> GroupQuantLinear:
        """The integer form: codes and zero points fixed, step sizes clamped as the forward clamps them."""
        z = self.zero_point.round().clamp(0, 2**self.bits - 1)
        codes = codes_of(self.weight, self.scale, self.zero_point, self.bits, self.group_size)
        return GroupQuantLinear(codes, z, self.scale.clamp(*CLIP), self.group_size, self.bits, self.bias)
