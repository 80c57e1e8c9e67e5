"""DataPlane with fake organ clients and a fake object store: thresholds, what is stored and in which order
(one object, the probability map, before the row), the masks asked for, pairing."""

from __future__ import annotations

import io
from dataclasses import fields

import numpy as np
import pytest
from PIL import Image

from common.errors import InvalidInput, NotFound, PayloadTooLarge, ServiceUnavailable
from gateway.resources.evaluations.schemas import ImageScorePublic, ThresholdScorePublic
from gateway.service import images, masks, views
from gateway.service.dataplane import DataPlane, ImageScore, ThresholdScore, Upload, pair_by_name
from gateway.service.masks import THRESHOLDS, probability_mask
from gateway.service.organs import OrganRegistry
from gateway.service.scoring import dice_iou_at, score_case
from services.spec import SERVICES_DIR
from tests.gateway.fakes import FakeClient, FakeStore, png, ramp


@pytest.fixture
def registry(tmp_path):
    return OrganRegistry(SERVICES_DIR, tmp_path)


def make_plane(registry, clients, store=None, rows=None, record=None):
    rows = rows if rows is not None else []
    return DataPlane(
        registry,
        clients,
        store or FakeStore(),
        results_bucket="results",
        record_segmentation=record or (lambda session, record: rows.append(record)),
        max_upload_bytes=2_000_000,
        max_image_pixels=4_000_000,
    )


def test_segment_thresholds_masks_and_storage(registry):
    rows, store = [], FakeStore()
    plane = make_plane(registry, {"liver": FakeClient(ramp), "cells": FakeClient(ramp)}, store, rows)
    result = plane.segment(None, "liver", png(np.zeros((40, 64), np.uint8)), "x.png", patient_id="p1")
    assert (result.width, result.height) == (64, 40)
    assert [m.threshold for m in result.masks] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    prob = ramp(40, 64)
    for m in result.masks:
        mask = np.asarray(Image.open(io.BytesIO(m.mask_png)))
        assert mask.shape == (40, 64) and set(np.unique(mask)) <= {0, 255}
        assert m.area_px == int((prob / 255.0 >= m.threshold).sum()) == int((mask == 255).sum())
    areas = [m.area_px for m in result.masks]
    assert areas == sorted(areas, reverse=True) and areas[0] > areas[-1] > 0
    # one object, the organ server's map as it came, and one row with the areas at every threshold
    assert list(store.objects) == [("results", rows[0].probability_key)] and len(rows) == 1
    assert rows[0].patient_id == "p1" and rows[0].id == result.id
    stored = store.objects[("results", rows[0].probability_key)]
    assert stored == result.probability_png == png(prob)
    assert rows[0].areas == result.areas == {f"{m.threshold:.1f}": m.area_px for m in result.masks}
    for m in result.masks:  # made again from the stored map: the very PNGs of the answer
        assert masks.mask_png(images.decode_probability(stored), m.threshold) == m.mask_png


@pytest.mark.parametrize("wanted", [(), (0.5,), (0.3, 0.7), THRESHOLDS])
def test_the_answer_carries_the_masks_asked_for_and_the_record_every_area(registry, wanted):
    rows, store = [], FakeStore()
    plane = make_plane(registry, {"liver": FakeClient(ramp), "cells": FakeClient(ramp)}, store, rows)
    result = plane.segment(None, "liver", png(np.zeros((40, 64), np.uint8)), "x.png", masks=wanted)
    assert [m.threshold for m in result.masks] == list(wanted)
    prob = ramp(40, 64)
    expected = {f"{t:.1f}": int(probability_mask(prob, t).sum()) for t in THRESHOLDS}
    assert result.areas == rows[0].areas == expected
    assert rows[0].stability == masks.stability(expected)  # the same whatever was asked
    for m in result.masks:
        assert m.mask_png == masks.mask_png(prob, m.threshold) and m.area_px == expected[f"{m.threshold:.1f}"]
    assert len(store.objects) == 1


@pytest.mark.parametrize("seed", range(5))
def test_areas_from_one_histogram_are_the_masks_pixel_counts(seed):
    rng = np.random.default_rng(seed)
    prob = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    prob[: seed * 3] = 255 if seed % 2 else 0  # runs of the extreme bytes too
    assert masks.areas(prob) == {f"{t:.1f}": int(probability_mask(prob, t).sum()) for t in THRESHOLDS}


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, THRESHOLDS),
        ("", THRESHOLDS),
        ("all", THRESHOLDS),
        (" ALL ", THRESHOLDS),
        ("none", ()),
        ("0.5", (0.5,)),
        ("0.7,0.5", (0.5, 0.7)),
        ("0.50, 0.2,0.5", (0.2, 0.5)),
    ],
)
def test_mask_selection(value, expected):
    assert masks.selection(value) == expected


@pytest.mark.parametrize(
    "value", ["some", "0.55", "0.9", "0.1", "1e-1", "0.5,", ",", "0.5;0.7", "nan", "-inf"]
)
def test_a_bad_mask_selection_is_a_400(value):
    with pytest.raises(InvalidInput) as info:
        masks.selection(value)
    assert info.value.code == "invalid_masks" and "0.2" in info.value.message


def test_the_published_card_sets_the_version_asked_for_and_the_default_threshold(registry, tmp_path):
    client = FakeClient(ramp)
    plane = make_plane(registry, {"liver": client, "cells": FakeClient(ramp)})
    image = png(np.zeros((32, 32), np.uint8))
    first = plane.segment(None, "liver", image, "x.png")
    assert client.versions == [None]  # nothing published: the organ server's default version
    assert first.default_threshold == registry.get("liver").spec.default_threshold
    (tmp_path / "liver.json").write_text('{"model_name": "liver", "version": "7", "default_threshold": 0.4}')
    result = plane.segment(None, "liver", image, "x.png")
    assert client.versions[-1] == "7"
    assert (result.model.version, result.default_threshold) == ("7", 0.4)
    assert [s.default_threshold for s in plane.list_organs() if s.name == "liver"] == [0.4]


def test_store_down_leaves_no_row_and_no_objects(registry):
    rows, store = [], FakeStore(fail_after=0)  # down from the start
    plane = make_plane(registry, {"liver": FakeClient(ramp), "cells": FakeClient(ramp)}, store, rows)
    with pytest.raises(ServiceUnavailable):
        plane.segment(None, "liver", png(np.zeros((32, 32), np.uint8)), "x.png")
    assert rows == [] and store.objects == {}


def test_row_failure_removes_written_objects(registry):
    store = FakeStore()

    def broken_row(session, record):
        raise RuntimeError("database is locked")

    plane = DataPlane(
        registry,
        {"liver": FakeClient(ramp)},
        store,
        results_bucket="results",
        record_segmentation=broken_row,
        max_upload_bytes=10**6,
        max_image_pixels=10**6,
    )
    with pytest.raises(RuntimeError):
        plane.segment(None, "liver", png(np.zeros((32, 32), np.uint8)), "x.png")
    assert store.objects == {}


# --- the image kept for the viewer (keep_image: the web pages ask for it) -------------------------------
def test_a_kept_image_is_written_beside_the_map_before_the_row(registry):
    rows, store = [], FakeStore()
    plane = make_plane(registry, {"liver": FakeClient(ramp)}, store, rows)
    grey = np.tile(np.arange(64, dtype=np.uint8) * 3, (40, 1))
    plane.segment(None, "liver", png(grey), "x.png", keep_image=True)
    (row,) = rows
    assert sorted(key for _, key in store.objects) == sorted([row.probability_key, row.view_key])
    image, meta = views.read_view(store.objects[("results", row.view_key)], views.IMAGE_MEMBER)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(image))), grey) and meta == {}


class ViewRefusingStore(FakeStore):
    def put_bytes(self, bucket, key, data, content_type=None):
        if key.endswith("/" + views.VIEW_OBJECT):
            raise ServiceUnavailable("object store unavailable: disk full")
        return super().put_bytes(bucket, key, data, content_type)


def test_an_image_that_cannot_be_kept_leaves_the_segmentation_whole_without_it(registry):
    rows, store = [], ViewRefusingStore()
    plane = make_plane(registry, {"liver": FakeClient(ramp)}, store, rows)
    result = plane.segment(None, "liver", png(np.zeros((32, 32), np.uint8)), "x.png", keep_image=True)
    assert len(result.masks) == 7 and rows[0].view_key is None
    assert list(store.objects) == [("results", rows[0].probability_key)]


def test_row_failure_removes_the_kept_image_too(registry):
    store = FakeStore()

    def broken_row(session, record):
        raise RuntimeError("database is locked")

    plane = make_plane(registry, {"liver": FakeClient(ramp)}, store, record=broken_row)
    with pytest.raises(RuntimeError):
        plane.segment(None, "liver", png(np.zeros((32, 32), np.uint8)), "x.png", keep_image=True)
    assert store.objects == {}


@pytest.mark.parametrize(
    "organ, error",
    [
        ("kidney", NotFound),
        ("Liver", InvalidInput),
        ("../etc", InvalidInput),
        ("", InvalidInput),
        ("x" * 300, InvalidInput),
    ],
)
def test_bad_organ_names_never_reach_a_server(registry, organ, error):
    client = FakeClient(ramp)
    plane = make_plane(registry, {"liver": client, "cells": client})
    with pytest.raises(error):
        plane.segment(None, organ, png(np.zeros((32, 32), np.uint8)), "x.png")
    assert client.calls == 0


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", InvalidInput),
        (b"not an image at all", InvalidInput),
        (png(np.zeros((64, 64), np.uint8))[:20], InvalidInput),  # cut inside its header
        (png(np.zeros((8, 8), np.uint8)), InvalidInput),  # tiny
        (png(np.zeros((3000, 2000), np.uint8)), InvalidInput),  # over the 4 megapixels of make_plane
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 3_000_000, PayloadTooLarge),
    ],
)
def test_bad_uploads_are_refused_before_inference(registry, data, error):
    client = FakeClient(ramp)
    plane = make_plane(registry, {"liver": client, "cells": client})
    with pytest.raises(error):
        plane.segment(None, "liver", data, "x.png")
    assert client.calls == 0


def test_corrupt_pixels_are_refused_by_the_organ_server_as_the_callers_bad_image(registry):
    """The header reads, so the upload goes to the organ server, which decodes it and refuses it (its 400):
    a 400 invalid_image naming the file, not a 503, and nothing stored."""
    rows, store, client = [], FakeStore(), FakeClient(ramp)
    plane = make_plane(registry, {"liver": client, "cells": client}, store, rows)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    truncated = png(noise)[:-200]
    with pytest.raises(InvalidInput) as info:
        plane.segment(None, "liver", truncated, "slice-17.png")
    assert client.calls == 1
    assert info.value.code == "invalid_image" and info.value.http_status == 400
    assert info.value.message.startswith("slice-17.png: ") and "truncated" in info.value.message
    assert rows == [] and store.objects == {}


class GarbageClient(FakeClient):
    """An organ server whose answer is not a PNG at all."""

    def predict(self, model_name, data, version=None, timeout=None, answer_magic=None):
        super().predict(model_name, data, version, timeout, answer_magic)
        return b"\x89PNG\r\n\x1a\n not really"


@pytest.mark.parametrize(
    "client", [FakeClient(lambda h, w: ramp(h // 2, w)), GarbageClient()], ids=["wrong size", "unreadable"]
)
def test_a_bad_answer_is_unavailable_and_leaves_no_object_and_no_row(registry, client):
    """The map is written while it is read: an answer that turns out wrong is removed again."""
    rows, store = [], FakeStore()
    plane = make_plane(registry, {"liver": client, "cells": FakeClient(ramp)}, store, rows)
    with pytest.raises(ServiceUnavailable) as info:
        plane.segment(None, "liver", png(np.zeros((32, 32), np.uint8)), "x.png")
    assert info.value.code == "organ_error" and client.calls == 1
    assert store.objects == {} and rows == []


def test_readiness_names_what_is_down(registry):
    plane = make_plane(
        registry,
        {"liver": FakeClient(ramp), "cells": FakeClient(error=ServiceUnavailable("x"))},
        FakeStore(fail_after=0),
    )
    readiness = plane.readiness()
    assert not readiness.ready
    assert sorted(readiness.down) == ["objectstore", "organ:cells"]
    assert readiness.components["organ:liver"] == "ok"


def test_evaluate_scores_against_labels(registry):
    half = lambda h, w: np.hstack([np.zeros((h, w // 2), np.uint8), np.full((h, w - w // 2), 200, np.uint8)])  # noqa: E731
    plane = make_plane(registry, {"liver": FakeClient(half), "cells": FakeClient(half)})
    image = png(np.zeros((32, 32), np.uint8))
    right = np.zeros((32, 32), np.uint8)
    right[:, 16:] = 255
    result = plane.evaluate(
        "liver",
        [Upload("a.png", image), Upload("b.png", image)],
        [Upload("b_mask.png", png(np.zeros((32, 32), np.uint8))), Upload("a_mask.png", png(right))],
    )
    by_name = {s.filename: s for s in result.images}
    assert by_name["a.png"].dice == pytest.approx(1.0) and by_name["a.png"].iou == pytest.approx(1.0)
    assert by_name["b.png"].dice == 0.0
    assert result.mean_dice == pytest.approx(0.5)
    per_t = {t.threshold: t.mean_dice for t in result.per_threshold}
    assert list(per_t) == list(THRESHOLDS)
    assert per_t[0.2] == pytest.approx(0.5) and per_t[0.8] == pytest.approx(0.5)  # 200/255 = 0.78 ≥ 0.7 only
    assert result.per_threshold[-1].mean_dice == pytest.approx(0.5)


def test_evaluate_label_size_mismatch_is_4xx(registry):
    plane = make_plane(registry, {"liver": FakeClient(ramp), "cells": FakeClient(ramp)})
    with pytest.raises(InvalidInput, match="same size"):
        plane.evaluate(
            "liver",
            [Upload("a.png", png(np.zeros((32, 32), np.uint8)))],
            [Upload("a_mask.png", png(np.zeros((32, 48), np.uint8)))],
        )


def test_pairing_by_file_name():
    im = lambda n: Upload(n, b"i")  # noqa: E731
    pairs = pair_by_name([im("dir/001.png"), im("002.dcm")], [im("002.png"), im("001_mask.png")], 10)
    assert [(a.filename, b.filename) for a, b in pairs] == [
        ("dir/001.png", "001_mask.png"),
        ("002.dcm", "002.png"),
    ]
    with pytest.raises(InvalidInput, match="no label for images"):
        pair_by_name([im("a.png")], [im("b.png")], 10)
    with pytest.raises(InvalidInput, match="1 images but 2 labels"):
        pair_by_name([im("a.png")], [im("a.png"), im("a_mask.png")], 10)
    with pytest.raises(InvalidInput, match="unique"):
        pair_by_name([im("a.png"), im("x/a.png")], [im("a.png"), im("b.png")], 10)
    with pytest.raises(InvalidInput, match="at most"):
        pair_by_name([im(f"{i}.png") for i in range(3)], [im(f"{i}.png") for i in range(3)], 2)


def test_dice_iou_edge_cases_and_the_stored_evaluations_agree():
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    prob = np.full((4, 4), 200, np.uint8)  # above 0.5, below 0.8
    assert dice_iou_at(prob, empty, [0.5, 0.8]) == {0.5: (0.0, 0.0), 0.8: (1.0, 1.0)}
    assert dice_iou_at(prob, full, [0.5, 0.8]) == {0.5: (1.0, 1.0), 0.8: (0.0, 0.0)}
    # /evaluate and stored evaluations (model test) score one case identically
    rng = np.random.default_rng(0)
    prob = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    label = rng.random((32, 32)) > 0.6
    case = score_case(prob, label, 0.5)
    at = dice_iou_at(prob, label, THRESHOLDS)
    assert at[0.5] == pytest.approx((case.dice, case.iou))
    assert {f"{t:.1f}": d for t, (d, _) in at.items()} == pytest.approx(case.dice_at)


@pytest.mark.parametrize("threshold", [*THRESHOLDS, 0.0, 0.001, 0.5 + 1e-12, 1.0, 1.5])
def test_byte_cutoffs_give_exactly_the_float_masks(threshold):
    every_byte = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = every_byte.astype(np.float64) / 255.0 >= threshold
    np.testing.assert_array_equal(probability_mask(every_byte, threshold), expected)


def test_the_object_is_in_the_store_before_the_row_is_written(registry):
    store = FakeStore()
    seen_at_row_time = []

    def row(session, record):
        seen_at_row_time.append(("results", record.probability_key) in store.objects)

    plane = make_plane(registry, {"liver": FakeClient(ramp)}, store, record=row)
    result = plane.segment(None, "liver", png(np.zeros((40, 64), np.uint8)), "x.png")
    assert seen_at_row_time == [True]
    assert list(store.objects) == [("results", f"segmentations/liver/{result.id}/probability.png")]


def test_a_failed_write_leaves_nothing(registry):
    class WritesFail(FakeStore):
        def put_bytes(self, bucket, key, data, content_type=None):
            raise ServiceUnavailable("object store unavailable: timeout")

    rows, store = [], WritesFail()
    plane = make_plane(registry, {"liver": FakeClient(ramp), "cells": FakeClient(ramp)}, store, rows)
    with pytest.raises(ServiceUnavailable):
        plane.segment(None, "liver", png(np.zeros((32, 32), np.uint8)), "x.png")
    assert rows == [] and store.objects == {}


def test_a_missing_model_on_a_known_organ_is_unavailable_not_unknown(registry):
    plane = make_plane(
        registry, {"liver": FakeClient(error=NotFound("Model not found: liver")), "cells": FakeClient(ramp)}
    )
    with pytest.raises(ServiceUnavailable) as info:
        plane.segment(None, "liver", png(np.zeros((32, 32), np.uint8)), "x.png")
    assert info.value.code == "model_not_ready"


@pytest.mark.parametrize("answer", [ramp, lambda h, w: np.zeros((h, w), np.uint8)])
def test_stability_from_areas_equals_the_pixel_dice_of_the_02_and_08_masks(registry, answer):
    from gateway.service.history import stability

    plane = make_plane(registry, {"liver": FakeClient(answer), "cells": FakeClient(answer)})
    result = plane.segment(None, "liver", png(np.zeros((40, 64), np.uint8)), "x.png")
    by_t = {m.threshold: np.asarray(Image.open(io.BytesIO(m.mask_png))) > 0 for m in result.masks}
    low, high = by_t[0.2], by_t[0.8]
    total = low.sum() + high.sum()
    expected = 1.0 if total == 0 else 2 * (low & high).sum() / total
    assert stability(result) == pytest.approx(expected)


def test_score_records_and_their_http_schemas_name_the_same_fields():
    """The HTTP schemas are built from the data plane's records field by field (`**vars`), and pydantic
    ignores names it does not know: a field added to a record only would vanish from the answer silently."""
    for record, schema in ((ImageScore, ImageScorePublic), (ThresholdScore, ThresholdScorePublic)):
        assert [f.name for f in fields(record)] == list(schema.model_fields)


def test_the_expected_time_is_the_median_of_the_organs_recent_successful_segmentations(registry):
    """What the segment page's progress bar expects (DataPlane.expected_seconds): nothing before the first
    segmentation of an organ, failures not counted, each organ its own, the median of the last few."""
    from gateway.service.dataplane import RECENT_SEGMENTATIONS

    store = FakeStore()
    plane = make_plane(registry, {"liver": FakeClient(ramp), "cells": FakeClient(ramp)}, store)
    assert plane.expected_seconds("liver") is None
    store.fail_after = 0
    with pytest.raises(ServiceUnavailable):
        plane.segment(None, "liver", png(np.zeros((32, 32), np.uint8)), "x.png")
    assert plane.expected_seconds("liver") is None  # a failure says nothing of how long one takes
    store.fail_after = None
    plane.segment(None, "liver", png(np.zeros((32, 32), np.uint8)), "x.png")
    assert plane.expected_seconds("liver") > 0 and plane.expected_seconds("cells") is None
    for seconds in [50.0, 2.0, 3.0, 4.0]:  # a slow outlier does not move the median far
        plane._remember_seconds("cells", seconds)
    assert plane.expected_seconds("cells") == 3.5
    for _ in range(RECENT_SEGMENTATIONS):  # only the recent ones count
        plane._remember_seconds("cells", 1.0)
    assert plane.expected_seconds("cells") == 1.0
