"""Normalisation helpers: GroupNorm after every convolution (batches on a CPU are small), and the layer
classes of a 2-D or 3-D network (`dims`), so one block definition serves both."""

from __future__ import annotations

from torch import nn

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def layers(table: dict[int, type[nn.Module]], dims: int) -> type[nn.Module]:
    """The layer class of `table` for a `dims`-dimensional network (2: images, 3: volumes)."""
    try:
        return table[dims]
    except KeyError:
        raise ValueError(f"dims must be 2 (images) or 3 (volumes), not {dims!r}") from None


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ max_groups that divides `channels`."""
    groups = next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def conv_gn_relu(in_ch: int, out_ch: int, kernel: int = 3, dilation: int = 1, dims: int = 2) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        layers(CONV, dims)(in_ch, out_ch, kernel, padding=pad, dilation=dilation, bias=False),
        group_norm(out_ch),
        nn.ReLU(inplace=True),
    )
