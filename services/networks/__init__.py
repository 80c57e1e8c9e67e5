"""The network architectures: `create_model(name, **kw)` and the registry `MODELS` of their names.

Part of the model contract (services/): the trainer builds these networks and the gateway checks a training
job's architecture against its names (services.architectures, the table `MODELS` is built from, read
without torch), so neither imports the other for them.

| name           | what                                                                   |
|----------------|------------------------------------------------------------------------|
| unet           | plain U-Net baseline (double conv + BatchNorm), 3 levels                |
| unet-res       | U-Net with Residual Block II (GroupNorm)                               |
| unet-eg        | U-Net with the EG module                                               |
| erunet         | ERU-Net (liver): 5 EGRConv blocks — two down, bottom, two up            |
| erunet-cells   | ERU-Net-cells: dilated convolutions in the residual blocks, depth 5     |
| eru_net_3d     | 3-D ERU-Net (volumes): 3-D EG modules, GroupNorm, Residual Block II, 4 levels |
| unet_3d        | plain 3-D U-Net baseline (double conv + BatchNorm), 4 levels           |

2-D networks take (B, C, H, W); 3-D ones (B, C, D, H, W) and return (B, out_channels, D, H, W) logits: for
a multi-label organ out_channels = labels + 1 (softmax over background and the labels); pass it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from services.architectures import ARCHITECTURES
from services.networks.unet import EncoderDecoder

# built from services.architectures' table, which the gateway reads without torch
MODELS: dict[str, Callable[..., nn.Module]] = {
    name: partial(EncoderDecoder, **arguments) for name, arguments in ARCHITECTURES.items()
}


def model_dims(name: str) -> int:
    """2 for a network of images, 3 for one of volumes."""
    return create_model(name, widths=(3, 6)).dims


def create_model(name: str, **kw) -> nn.Module:
    """Build a registered architecture. kw: in_channels, out_channels, widths, …"""
    try:
        factory = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}") from None
    return factory(**kw)
