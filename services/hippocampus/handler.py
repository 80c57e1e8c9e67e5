"""TorchServe entry point for the hippocampus server (brain MRI volumes, two labels).

A 3-D organ: the shared VolumeSegmentationHandler takes one whole volume per request and answers the softmax
probabilities of background, anterior and posterior hippocampus; the size, spacing and per-volume
normalisation are organ data in spec.yaml.
"""

from services.handler_base import VolumeSegmentationHandler


class HippocampusHandler(VolumeSegmentationHandler):
    """Hippocampus segmentation (head and body) on MRI volumes cropped around it."""
