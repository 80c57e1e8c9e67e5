"""One encoder–decoder (U-Net shape) parameterised by its block; ERU-Net and the baselines are instances."""

from __future__ import annotations

import torch
from torch import nn

from services.networks.blocks import BLOCKS
from services.networks.norm import CONV, CONV_TRANSPOSE, MAX_POOL, layers


class EncoderDecoder(nn.Module):
    """U-Net topology: len(widths) levels (the last is the bottom), max-pool down, transposed-conv up,
    skip concatenation. Returns logits (N, out_channels, H, W); H and W must be multiples of `stride`.
    `dims=3`: the same on volumes, (N, C, D, H, W) → (N, out_channels, D, H, W)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: tuple[int, ...] = (24, 48, 96),
        block: str = "egr",
        dilation: int = 1,
        dims: int = 2,
    ):
        super().__init__()
        self.dims = dims
        if block not in BLOCKS:
            raise KeyError(f"unknown block {block!r}; valid: {', '.join(BLOCKS)}")
        make = BLOCKS[block]
        self.stride = 2 ** (len(widths) - 1)
        self.encoders = nn.ModuleList()
        prev = in_channels
        for width in widths:
            self.encoders.append(make(prev, width, dilation=dilation, dims=dims))
            prev = width
        self.pool = layers(MAX_POOL, dims)(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.ups.append(layers(CONV_TRANSPOSE, dims)(prev, width, 2, stride=2))
            self.decoders.append(make(2 * width, width, dilation=dilation, dims=dims))
            prev = width
        self.head = layers(CONV, dims)(prev, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        for n in size:
            if n % self.stride != 0:
                what = "images" if self.dims == 2 else "volumes"
                # no loop or comprehension here: the TorchScript → ONNX exporter fails on one in this branch
                shown = f"{size[0]}×{size[1]}" + (f"×{size[2]}" if len(size) == 3 else "")
                raise ValueError(
                    f"input size {shown} is not a multiple of {self.stride}: pad your "
                    f"{what} to a multiple of {self.stride} (services.preprocess does this)"
                )
        skips: list[torch.Tensor] = []
        for i, encoder in enumerate(self.encoders):
            if i > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        skips.pop()  # the bottom has no skip
        for up, decoder in zip(self.ups, self.decoders, strict=True):
            x = up(x)
            x = decoder(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)
