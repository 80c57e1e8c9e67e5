"""One encoder–decoder (U-Net shape) parameterised by its block; ERU-Net and the baselines are instances."""

from __future__ import annotations

import torch
from torch import nn

from services.networks.blocks import BLOCKS


class EncoderDecoder(nn.Module):
    """U-Net topology: len(widths) levels (the last is the bottom), max-pool down, transposed-conv up,
    skip concatenation. Returns logits (N, out_channels, H, W); H and W must be multiples of `stride`."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: tuple[int, ...] = (24, 48, 96),
        block: str = "egr",
        dilation: int = 1,
    ):
        super().__init__()
        if block not in BLOCKS:
            raise KeyError(f"unknown block {block!r}; valid: {', '.join(BLOCKS)}")
        make = BLOCKS[block]
        self.stride = 2 ** (len(widths) - 1)
        self.encoders = nn.ModuleList()
        prev = in_channels
        for width in widths:
            self.encoders.append(make(prev, width, dilation=dilation))
            prev = width
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.ups.append(nn.ConvTranspose2d(prev, width, 2, stride=2))
            self.decoders.append(make(2 * width, width, dilation=dilation))
            prev = width
        self.head = nn.Conv2d(prev, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if h % self.stride != 0 or w % self.stride != 0:
            raise ValueError(
                f"input size {h}×{w} is not a multiple of {self.stride}: pad your images to a "
                f"multiple of {self.stride} (services.preprocess.prepare does this)"
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
