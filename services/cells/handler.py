"""TorchServe entry point for the cells server (H&E histology tiles, nuclei).

Nothing differs from the shared handler: inference at native resolution through 256² windows that
overlap by a quarter (the training crop's size, so every pixel is predicted with the context the network
learned from; `python -m trainer.inference_modes` measured it against the whole tile) is
`inference.mode: sliding` in spec.yaml, and tiles of different sizes in one batch are already run as
separate passes by SegmentationHandler.inference. The size cap for a tile is `handler.max_image_pixels`
in model-config.yaml.
"""

from services.handler_base import SegmentationHandler


class CellsHandler(SegmentationHandler):
    """Nucleus segmentation on RGB H&E tiles."""
