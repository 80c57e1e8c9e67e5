"""Residual Block II: conv–GN–ReLU–conv–GN plus an identity (or 1×1 projection) shortcut; ReLU after sum.
2-D or 3-D (`dims`)."""

from __future__ import annotations

import torch
from torch import nn

from services.networks.norm import CONV, group_norm, layers


class ResidualBlockII(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1, dims: int = 2):
        super().__init__()
        conv = layers(CONV, dims)
        self.body = nn.Sequential(
            conv(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            group_norm(out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            group_norm(out_channels),
        )
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(conv(in_channels, out_channels, 1, bias=False), group_norm(out_channels))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))
