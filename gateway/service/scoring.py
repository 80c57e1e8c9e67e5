"""How good one prediction is against its label (MONAI metrics), and the picture that shows it.

Dice, IoU and the 95 % Hausdorff distance come from `monai.metrics`, on the mask at the evaluation's
threshold; Dice is also computed at every contract threshold (0.2 … 0.8) so the best one can be marked.
Conventions: two empty masks agree perfectly (Dice = IoU = 1); HD95 is undefined (None) when either mask
is empty. HD95 is in pixels, and also in millimetres (MONAI's `spacing`) when the image carried its pixel
spacing (DICOM).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from gateway.service.masks import THRESHOLDS, probability_mask

if TYPE_CHECKING:  # torch itself comes with MONAI at the first evaluation, not at the gateway's start
    import torch

# Longest side of each of the four overlay panels: a 512² CT slice at its own size (the viewer zooms into it),
# a 1000² histology tile halved.
OVERLAY_TILE = 512


@dataclass(frozen=True)
class CaseScore:
    dice: float
    iou: float
    hd95: float | None
    dice_at: dict[str, float]  # "0.2" → Dice at that threshold
    predicted_px: int
    label_px: int
    prediction: np.ndarray  # bool H×W at the evaluation's threshold (a volume: its overlay's axial slice)
    hd95_mm: float | None = None  # with the image's pixel spacing, when it carried one
    # an organ of several labels (3-D): {label: {"dice", "iou", "hd95_mm"}}; dice, iou, hd95_mm: their means
    per_label: dict[str, dict[str, float | None]] | None = None


def _tensor(mask: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def dice_iou_hd95(
    pred: np.ndarray, label: np.ndarray, *, with_hd95: bool = True
) -> tuple[float, float, float | None]:
    """MONAI's Dice, IoU and HD95 (pixels; None when `with_hd95` is false) of two boolean masks of the same
    shape (2-D or 3-D)."""
    from monai.metrics import compute_dice, compute_iou

    p, y = _tensor(pred), _tensor(label)
    dice = float(compute_dice(p, y, include_background=True, ignore_empty=False).item())
    iou = float(compute_iou(p, y, include_background=True, ignore_empty=False).item())
    return dice, iou, hd95(pred, label) if with_hd95 else None


def hd95(pred: np.ndarray, label: np.ndarray, spacing_mm: tuple[float, ...] | None = None) -> float | None:
    """MONAI's 95 % Hausdorff distance of two boolean masks: in pixels, or in millimetres with the (row,
    column) pixel spacing (a volume: one spacing per axis); None when either mask is empty."""
    from monai.metrics import compute_hausdorff_distance

    if not (pred.any() and label.any()):
        return None
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        value = float(
            compute_hausdorff_distance(
                _tensor(pred), _tensor(label), include_background=True, percentile=95,
                spacing=list(spacing_mm) if spacing_mm else None,
            ).item()
        )  # fmt: skip
    return value if math.isfinite(value) else None


def dice_iou_at(prob_u8: np.ndarray, label: np.ndarray, thresholds) -> dict[float, tuple[float, float]]:
    """MONAI's Dice and IoU of the mask at each threshold against the label, in one batched call each."""
    import torch
    from monai.metrics import compute_dice, compute_iou

    thresholds = list(thresholds)
    preds = torch.from_numpy(np.stack([probability_mask(prob_u8, t) for t in thresholds]).astype(np.float32))
    p, y = preds[:, None], _tensor(label).expand(len(thresholds), -1, -1, -1)
    dice = compute_dice(p, y, include_background=True, ignore_empty=False)[:, 0].tolist()
    iou = compute_iou(p, y, include_background=True, ignore_empty=False)[:, 0].tolist()
    return {t: (float(d), float(i)) for t, d, i in zip(thresholds, dice, iou, strict=True)}


def score_case(
    prob_u8: np.ndarray, label: np.ndarray, threshold: float, spacing_mm: tuple[float, float] | None = None
) -> CaseScore:
    """Scores of one probability map (uint8 H×W) against its label (bool H×W); HD95 in millimetres too
    when the image's (row, column) pixel spacing is given."""
    if prob_u8.shape != label.shape:
        raise ValueError(f"prediction {prob_u8.shape} and label {label.shape} differ in size")
    pred = probability_mask(prob_u8, threshold)
    dice, iou, hd95_px = dice_iou_hd95(pred, label)
    dice_at = {f"{t:.1f}": d for t, (d, _) in dice_iou_at(prob_u8, label, THRESHOLDS).items()}
    return CaseScore(
        dice, iou, hd95_px, dice_at, int(np.count_nonzero(pred)), int(np.count_nonzero(label)), pred,
        hd95_mm=hd95(pred, label, spacing_mm) if spacing_mm and hd95_px is not None else None,
    )  # fmt: skip


def summarize(cases: list[CaseScore]) -> dict:
    """Mean and spread over cases, Dice per threshold with the best threshold (ties: the lower one), and for
    an organ of several labels the means per label (`label_means`; else None)."""
    dice = np.array([c.dice for c in cases], dtype=np.float64)
    hd = [c.hd95 for c in cases if c.hd95 is not None]
    per_threshold = [
        {"threshold": t, "mean_dice": float(np.mean([c.dice_at[f"{t:.1f}"] for c in cases]))}
        for t in THRESHOLDS
    ]
    best = max(per_threshold, key=lambda row: (row["mean_dice"], -row["threshold"]))
    for row in per_threshold:
        row["best"] = row is best
    return {
        "mean_dice": float(dice.mean()),
        "std_dice": float(dice.std()),
        "min_dice": float(dice.min()),
        "max_dice": float(dice.max()),
        "mean_iou": float(np.mean([c.iou for c in cases])),
        "mean_hd95": float(np.mean(hd)) if hd else None,
        "per_threshold": per_threshold,
        "best_threshold": best["threshold"],
        "per_label": label_means([c.per_label for c in cases]) if cases[0].per_label else None,
    }


def label_means(cases: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, float | None]]:
    """{label: {"mean_dice", "mean_iou", "mean_hd95_mm"}} over cases scored per label ({label: {"dice", "iou",
    "hd95_mm"}}); HD95 is the mean of the cases where it is known, None when it is known for none."""
    means = {}
    for label in cases[0]:
        hd = [c[label]["hd95_mm"] for c in cases if c[label]["hd95_mm"] is not None]
        means[label] = {
            "mean_dice": float(np.mean([c[label]["dice"] for c in cases])),
            "mean_iou": float(np.mean([c[label]["iou"] for c in cases])),
            "mean_hd95_mm": float(np.mean(hd)) if hd else None,
        }
    return means


def grey_preview(image: np.ndarray) -> np.ndarray:
    """A decoded image (float [0, 1], H×W or H×W×C) as uint8 H×W grey."""
    if image.ndim == 3:
        image = image.mean(axis=2)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def overlay_png(grey: np.ndarray, label: np.ndarray, pred: np.ndarray) -> bytes:
    """Four panels side by side: image | label (green) | prediction (red) | differences
    (agreement yellow, false positive red, false negative blue)."""
    base = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)

    def tint(mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
        out = base.copy()
        out[mask] = 0.45 * out[mask] + 0.55 * np.array(colour, np.float32)
        return out

    diff = base.copy()
    for mask, colour in (
        (label & pred, (255, 220, 0)),
        (pred & ~label, (230, 30, 30)),
        (label & ~pred, (30, 90, 255)),
    ):
        diff[mask] = 0.35 * diff[mask] + 0.65 * np.array(colour, np.float32)
    panels = [base, tint(label, (0, 200, 60)), tint(pred, (230, 30, 30)), diff]
    tiles = []
    for panel in panels:
        tile = Image.fromarray(np.clip(panel, 0, 255).astype(np.uint8), "RGB")
        tile.thumbnail((OVERLAY_TILE, OVERLAY_TILE), Image.Resampling.NEAREST)
        tiles.append(tile)
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 3 * 4, tiles[0].height), (0, 0, 0))
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 4
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def thumbnail_png(prob_u8: np.ndarray, size: int = 128) -> bytes:
    """A small grey preview of a probability map (history lists)."""
    image = Image.fromarray(prob_u8, "L")
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
