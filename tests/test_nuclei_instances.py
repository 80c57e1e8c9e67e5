"""The measurement behind docs/cells-instances.md (tools.nuclei_instances.score_tile): two nuclei the expert
kept apart that the model's mask joins are counted as touching, and as split when the counter separates them;
a convex expert nucleus cut in two by the model's mask is over-split; one the model outlines alike is kept."""

from __future__ import annotations

import numpy as np

from tests.shapes import discs
from tools.nuclei_instances import score_tile, summarise


def test_two_nuclei_joined_by_the_model_and_split_by_the_counter():
    truth = discs((80, 140), [(40, 40), (40, 82)], 18)  # apart (centres 42 px, radii 18)
    predicted = discs((80, 140), [(40, 40), (40, 74)], 18)  # the second one drawn closer: they touch
    s = score_tile("t", truth, predicted, 3, 1.0, {})
    assert (s.truth_blobs, s.predicted_blobs) == (2, 1)
    assert s.touching == 2 and s.split == 2 and s.merged == 0
    assert s.counted == s.reference == 2


def test_a_blob_the_counter_cannot_split_is_merged():
    truth = discs((80, 140), [(40, 40), (40, 82)], 18)
    yy, xx = np.mgrid[:80, :140]
    predicted = ((yy - 40) / 20) ** 2 + ((xx - 61) / 42) ** 2 <= 1  # one convex outline around both
    s = score_tile("t", truth, predicted, 3, 1.0, {})
    assert s.touching == 2 and s.split == 0 and s.merged == 2


def test_a_single_nucleus_kept_or_over_split():
    truth = discs((80, 80), [(40, 40)], 20)
    kept = score_tile("t", truth, truth, 3, 1.0, {})
    assert (kept.singles, kept.kept, kept.over_split) == (1, 1, 0)
    halves = truth.copy()
    halves[:, 39:41] = False  # the model's mask cut in two
    cut = score_tile("t", truth, halves, 3, 1.0, {})
    assert (cut.singles, cut.kept, cut.over_split) == (1, 0, 1)
    summary = summarise([kept, cut])
    assert summary.kept_rate == 0.5 and summary.over_split_rate == 0.5
