"""Uniform group-wise integer base weights, shared by the quantizer that makes them (quant=efficientqat) and the
method that trains their step sizes (peft=e2e_qp), like models/kbit.py for the bitsandbytes bases.

    GroupQuantLinear(codes, zeros, scales, group_size, bits, bias)
                                  a linear whose weight is W^ = (Wq - z) * s per group of `group_size` input
                                  columns: integer codes Wq and zero points z frozen (uint8 buffers), step sizes
                                  s trainable (the fp32 parameter `scales`, shape [out, in / group_size])
    dequantize(model)             every GroupQuantLinear -> nn.Linear holding W^ (fp32), in place
"""

from __future__ import annotations

import torch
from torch import nn


class GroupQuantLinear(nn.Module):
    def __init__(self, codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group_size: int, bits: int,
                 bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.group_size, self.bits = group_size, bits
        self.register_buffer("codes", codes.to(torch.uint8))
        self.register_buffer("zeros", zeros.to(torch.uint8))
        self.scales = nn.Parameter(scales.float(), requires_grad=False)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def weight_hat(self) -> torch.Tensor:
        """W^ = (Wq - z) * s, in fp32 (the order of the reference's fake quantizer)."""
        o, g = self.out_features, self.group_size
        q = self.codes.view(o, -1, g).float()
        return ((q - self.zeros.float()[..., None]) * self.scales[..., None]).view(o, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.weight_hat().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group_size={self.group_size}"


def layers(model: nn.Module) -> list[tuple[str, GroupQuantLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, GroupQuantLinear)]


@torch.no_grad()
def dequantize(model: nn.Module) -> nn.Module:
    """Every GroupQuantLinear replaced by an nn.Linear holding its W^ (fp32): a plain Hugging Face model."""
    from tuneforge.models.kbit import replace_modules

    def make(m):
        if not isinstance(m, GroupQuantLinear):
            return None
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        lin.weight = nn.Parameter(m.weight_hat().detach().clone(), requires_grad=False)
        if m.bias is not None:
            lin.bias = nn.Parameter(m.bias.float().clone(), requires_grad=False)
        return lin

    replace_modules(model, make)
    return model
