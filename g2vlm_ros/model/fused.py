"""Linear layers that read the same input, computed by one GEMM over a concatenated weight.

The checkpoint stores q/k/v and gate/up projections separately, and the module tree keeps those
names (state dicts load and save unchanged). `FusedLinears` concatenates the weights once and
re-points each layer's parameter at its rows of the concatenation, so no second copy of the
weights exists and in-place updates (loading, `randomize`, optimizer steps) reach both views.
Anything that replaces a parameter's storage instead (a dtype or device conversion, a loader that
swaps in a new Parameter) breaks the link; `usable()` notices, and callers then fall back to the
separate layers until `fuse` is called again.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FusedLinears:
    def __init__(self, layers: Sequence[nn.Linear]):
        self.layers = list(layers)
        self.sizes = [layer.out_features for layer in self.layers]
        has_bias = [layer.bias is not None for layer in self.layers]
        if len(set(has_bias)) != 1:
            raise ValueError("fused layers must all have a bias or none")
        with torch.no_grad():
            self.weight = torch.cat([layer.weight for layer in self.layers])
            self.bias = torch.cat([layer.bias for layer in self.layers]) if has_bias[0] else None
        offset = 0
        for layer, rows in zip(self.layers, self.sizes, strict=True):
            # .data keeps the Parameter objects (optimizers and hooks hold them) and shares storage
            layer.weight.data = self.weight[offset:offset + rows]
            if self.bias is not None:
                layer.bias.data = self.bias[offset:offset + rows]
            offset += rows

    def intact(self) -> bool:
        """True while every layer's parameters still live in the concatenated tensors."""
        def shares(part: torch.Tensor, whole: torch.Tensor) -> bool:
            return (part.device == whole.device and part.dtype == whole.dtype
                    and part.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr())

        return all(shares(layer.weight, self.weight) and (self.bias is None or shares(layer.bias, self.bias))
                   for layer in self.layers)

    def usable(self) -> bool:
        """The fused GEMM is used for inference only: gradients must reach the separate Parameters."""
        if torch.is_grad_enabled() and any(layer.weight.requires_grad for layer in self.layers):
            return False
        return self.intact()

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1))

    def packed(self, x: torch.Tensor) -> torch.Tensor:
        """All outputs side by side [..., sum(sizes)] (rows contiguous), for fused consumers."""
        return F.linear(x, self.weight, self.bias)
