"""The per-level blocks the encoder–decoder is built from; the ablation swaps one for another. Each takes
`dims` (2: images, 3: volumes)."""

from __future__ import annotations

from torch import nn

from services.networks.eg_module import EGModule
from services.networks.norm import BATCH_NORM, CONV, conv_gn_relu, group_norm, layers
from services.networks.residual import ResidualBlockII


class DoubleConv(nn.Sequential):
    """Plain U-Net block: (conv 3×3 – BatchNorm – ReLU) × 2."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1, dims: int = 2):
        conv, norm = layers(CONV, dims), layers(BATCH_NORM, dims)
        super().__init__(
            conv(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualStage(nn.Sequential):
    """U-Net + Residual Block II: a conv–GN–ReLU stem to the level's width, then Residual Block II."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1, dims: int = 2):
        super().__init__(
            conv_gn_relu(in_channels, out_channels, dilation=dilation, dims=dims),
            ResidualBlockII(out_channels, out_channels, dilation, dims=dims),
        )


class EGStage(nn.Sequential):
    """U-Net + EG module: EG module – GN – ReLU, then a conv–GN–ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, dilation: int = 1, branches: int = 3, dims: int = 2
    ):
        super().__init__(
            EGModule(in_channels, out_channels, branches, dims=dims),
            group_norm(out_channels),
            nn.ReLU(inplace=True),
            conv_gn_relu(out_channels, out_channels, dilation=dilation, dims=dims),
        )


class EGRConv(nn.Sequential):
    """ERU-Net's EGRConv block: EG module + GN (+ ReLU) + Residual Block II."""

    def __init__(
        self, in_channels: int, out_channels: int, dilation: int = 1, branches: int = 3, dims: int = 2
    ):
        super().__init__(
            EGModule(in_channels, out_channels, branches, dims=dims),
            group_norm(out_channels),
            nn.ReLU(inplace=True),
            ResidualBlockII(out_channels, out_channels, dilation, dims=dims),
        )


BLOCKS: dict[str, type[nn.Module]] = {
    "double": DoubleConv,
    "residual": ResidualStage,
    "eg": EGStage,
    "egr": EGRConv,
}
