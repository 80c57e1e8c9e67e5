"""EG module: a multi-scale dilated block (ERU-Net's "EG module").

How we read the paper's formulas:
- a 1×1 convolution reduces the M input channels to d = N / K channels;
- K parallel branches follow; branch i (i = 1 … K) is a convolution with kernel size k_i = 2i − 1 and
  dilation rate r_i = 2^(i+1), so its effective kernel size is n_i = r_i · (k_i − 1) + 1
  (i = 1: 1×1, n = 1; i = 2: 3×3 dilated 8, n = 17; i = 3: 5×5 dilated 16, n = 65);
- each branch keeps d channels ("same" padding) and the K outputs are concatenated back to N channels.
For i = 1 the kernel is 1×1, so its dilation has no effect. `dilation_base` lets a variant use
r_i = base^(i+1) with another base; the paper's value is 2. GroupNorm follows every convolution.

In 3-D (`dims=3`, the hippocampus) the branches are `GEOMETRY_3D` instead: 1×1×1, 3×3×3 dilated 2 and
3×3×3 dilated 4 (effective 1, 5, 9 voxels). The 2-D geometry was made for 256² slices: in a ~40×56×40
volume a 5-kernel dilated 16 reaches 65 voxels, past the whole volume (all padding), and a 5³ kernel costs
4.6 times a 3³ one.
"""

from __future__ import annotations

import torch
from torch import nn

from services.networks.norm import CONV, group_norm, layers

GEOMETRY_3D = ((1, 1), (3, 2), (3, 4))  # (kernel, dilation) of each branch of a 3-D EG module


def branch_geometry(i: int, dilation_base: int = 2) -> tuple[int, int, int]:
    """(kernel size, dilation, effective size) of branch i (1-based)."""
    kernel = 2 * i - 1
    dilation = dilation_base ** (i + 1) if kernel > 1 else 1
    return kernel, dilation, dilation * (kernel - 1) + 1


class EGModule(nn.Module):
    """`geometry`: (kernel, dilation) per branch; by default the paper's (branch_geometry) in 2-D and
    GEOMETRY_3D in 3-D (`branches` of them)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        branches: int = 3,
        dilation_base: int = 2,
        dims: int = 2,
        geometry: tuple[tuple[int, int], ...] | None = None,
    ):
        super().__init__()
        if geometry is None:
            geometry = (
                GEOMETRY_3D[:branches]
                if dims == 3
                else tuple(branch_geometry(i, dilation_base)[:2] for i in range(1, branches + 1))
            )
        branches = len(geometry)
        conv = layers(CONV, dims)
        if out_channels % branches:
            raise ValueError(
                f"EG module: out_channels ({out_channels}) must be divisible by K={branches} branches; "
                f"choose widths that are multiples of {branches}"
            )
        d = out_channels // branches
        self.reduce = nn.Sequential(conv(in_channels, d, 1, bias=False), group_norm(d), nn.ReLU(inplace=True))
        self.branches = nn.ModuleList()
        for kernel, dilation in geometry:
            self.branches.append(
                nn.Sequential(
                    conv(d, d, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, bias=False),
                    group_norm(d),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)
        return torch.cat([branch(y) for branch in self.branches], dim=1)
