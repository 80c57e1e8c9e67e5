"""Where tests read the real labelled data: ../shared/data beside the repository (never copied in)."""

from trainer.data import CELLS_TRAIN, LIVER_TRAIN, SHARED_DATA

LIVER_SLICE = LIVER_TRAIN / "000.png"

__all__ = ["CELLS_TRAIN", "LIVER_SLICE", "LIVER_TRAIN", "SHARED_DATA"]
