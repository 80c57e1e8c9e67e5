"""EG module: a multi-scale dilated block (ERU-Net's "EG module").

How we read the paper's formulas:
- a 1×1 convolution reduces the M input channels to d = N / K channels;
- K parallel branches follow; branch i (i = 1 … K) is a convolution with kernel size k_i = 2i − 1 and
  dilation rate r_i = 2^(i+1), so its effective kernel size is n_i = r_i · (k_i − 1) + 1
  (i = 1: 1×1, n = 1; i = 2: 3×3 dilated 8, n = 17; i = 3: 5×5 dilated 16, n = 65);
- each branch keeps d channels ("same" padding) and the K outputs are concatenated back to N channels.
For i = 1 the kernel is 1×1, so its dilation has no effect. `dilation_base` lets a variant use
r_i = base^(i+1) with another base; the paper's value is 2. GroupNorm follows every convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from services.networks.norm import group_norm


def branch_geometry(i: int, dilation_base: int = 2) -> tuple[int, int, int]:
    """(kernel size, dilation, effective size) of branch i (1-based)."""
    kernel = 2 * i - 1
    dilation = dilation_base ** (i + 1) if kernel > 1 else 1
    return kernel, dilation, dilation * (kernel - 1) + 1


class EGModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, branches: int = 3, dilation_base: int = 2):
        super().__init__()
        if out_channels % branches:
            raise ValueError(
                f"EG module: out_channels ({out_channels}) must be divisible by K={branches} branches; "
                f"choose widths that are multiples of {branches}"
            )
        d = out_channels // branches
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, d, 1, bias=False), group_norm(d), nn.ReLU(inplace=True)
        )
        self.branches = nn.ModuleList()
        for i in range(1, branches + 1):
            kernel, dilation, _ = branch_geometry(i, dilation_base)
            self.branches.append(
                nn.Sequential(
                    nn.Conv2d(
                        d, d, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, bias=False
                    ),
                    group_norm(d),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)
        return torch.cat([branch(y) for branch in self.branches], dim=1)
