"""TorchServe entry point for the liver server (abdominal CT slices).

Nothing differs from the shared handler: the Hounsfield window for DICOM, the 256×256 model size and the
normalisation are organ data in spec.yaml, which SegmentationHandler already applies. The class exists so
that the .mar names an organ-specific entry point and a future liver-only hook has one obvious home.
"""

from services.handler_base import SegmentationHandler


class LiverHandler(SegmentationHandler):
    """Liver segmentation on CT slices (PNG/JPEG/TIFF already windowed, or DICOM in Hounsfield units)."""
