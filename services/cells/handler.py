"""TorchServe entry point for the cells server (H&E histology tiles, nuclei).

Nothing differs from the shared handler: whole-tile inference at native resolution with reflect padding
to a multiple of the network stride is `inference.mode: whole` in spec.yaml, averaged over the tile's
mirror images `inference.tta: flips`, and tiles of different sizes in one batch are already run as
separate forward passes by SegmentationHandler.inference. The size cap
for a whole tile (memory of a full-resolution forward pass) is `handler.max_image_pixels` in
model-config.yaml.
"""

from services.handler_base import SegmentationHandler


class CellsHandler(SegmentationHandler):
    """Nucleus segmentation on RGB H&E tiles."""
