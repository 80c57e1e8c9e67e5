"""Where tests read the real labelled data: ../shared/data beside the repository (never copied in), at the
paths the organs' recipes (services/<organ>/recipe.yaml) name."""

from services.spec import SERVICES_DIR, load_recipe

SHARED_DATA = SERVICES_DIR.parents[1] / "shared" / "data"
LIVER_TRAIN = load_recipe("liver").data.train
CELLS_TRAIN = load_recipe("cells").data.train
LIVER_SLICE = LIVER_TRAIN / "000.png"

__all__ = ["CELLS_TRAIN", "LIVER_SLICE", "LIVER_TRAIN", "SHARED_DATA"]
