"""The network architectures as data: a name and the arguments of `services.networks.unet.EncoderDecoder`.

`services.networks.MODELS` builds the networks from this table (and needs torch); the gateway only checks a
training job's architecture against its names. Importing torch for that cost every gateway process 0.85 s at
start and about 220 MB of memory (`import gateway.main`: 2.87 s and 451 MB peak RSS with torch, 1.89 s and
229 MB without, 2026-12-04). A network added here is built by the trainer and offered by the gateway.
"""

ARCHITECTURES: dict[str, dict] = {
    "unet": {"widths": (24, 48, 96), "block": "double"},
    "unet-res": {"widths": (24, 48, 96), "block": "residual"},
    "unet-eg": {"widths": (24, 48, 96), "block": "eg"},
    "erunet": {"widths": (24, 48, 96), "block": "egr"},
    "erunet-cells": {"widths": (12, 24, 48, 96, 192), "block": "egr", "dilation": 2},
    "eru_net_3d": {"widths": (12, 24, 48, 96), "block": "egr", "dims": 3},
    "unet_3d": {"widths": (12, 24, 48, 96), "block": "double", "dims": 3},
}
