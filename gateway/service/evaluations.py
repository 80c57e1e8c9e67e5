"""Testing a model version on labelled cases, kept and comparable.

Cases come from an upload (images + labels matched by file name, as `POST /api/v1/evaluate`) or from a
stored dataset (its manifest's pairs in the datasets bucket). Each case is segmented by the organ server
at the requested version, scored (gateway.service.scoring: Dice, IoU, HD95, Dice per threshold) and drawn
as an overlay stored in the results bucket under `evaluations/<id>/`. Objects are written before the rows
and removed again when the rows cannot be written.

A 3-D organ (spec `dimensions: 3`) takes uploaded volumes only (a NIfTI, or a zip of one DICOM series, and
a NIfTI label volume on its grid; datasets are 2-D pairs): each is scored as `POST /api/v1/evaluate` scores
it (gateway.service.volume3d.score_volume: Dice and IoU per label and their mean, at every threshold; HD95
in mm per label), and its overlay is one axial slice, the one with the most label voxels, drawn as a 2-D
case's on the foreground (any label).

Comparison pairs two evaluations case by case (by case name): per case which version wins, and the totals.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from gateway import metrics, tenancy
from gateway.access import EVALUATION_READ
from gateway.core.db import commit
from gateway.models import Dataset, Evaluation, EvaluationCase, ModelVersion, audit
from gateway.principal import Principal
from gateway.service import images, model_registry, scoring, volume3d
from gateway.service.dataplane import Case, DataPlane, Upload, labelled_cases, score_cases
from gateway.service.masks import THRESHOLDS
from gateway.service.organs import Organ
from services import imaging, volumes

TIE = 1e-9


@dataclass(frozen=True)
class Target:
    """What is evaluated: a recorded version (row) or, for an organ without one, what the organ serves."""

    organ: str
    model_name: str
    version: str
    threshold: float
    row: ModelVersion | None


@dataclass(frozen=True)
class ScoredCase:
    """One case of a stored evaluation, scored, with the overlay (PNG) that shows it, before it is stored."""

    name: str
    score: scoring.CaseScore
    overlay_png: bytes
    width: int
    height: int
    spacing_mm: tuple[float, float] | None = None  # (row, column), when the image carried one


def overlay_key(evaluation_id: uuid.UUID, index: int) -> str:
    """Where the overlay of an evaluation's `index`-th case is stored in the results bucket."""
    return f"evaluations/{evaluation_id}/{index:04d}.png"


def case_row(evaluation_id: uuid.UUID, case: ScoredCase, key: str) -> EvaluationCase:
    """The EvaluationCase row of a scored case whose overlay is stored under `key`."""
    score = case.score
    return EvaluationCase(
        evaluation_id=evaluation_id,
        name=case.name[:256],
        dice=score.dice,
        iou=score.iou,
        hd95=score.hd95,
        hd95_mm=score.hd95_mm,
        pixel_spacing_row_mm=case.spacing_mm[0] if case.spacing_mm else None,
        pixel_spacing_col_mm=case.spacing_mm[1] if case.spacing_mm else None,
        dice_at=score.dice_at,
        per_label=score.per_label,
        width=case.width,
        height=case.height,
        predicted_px=score.predicted_px,
        label_px=score.label_px,
        overlay_key=key,
    )


def evaluation_row(
    evaluation_id: uuid.UUID,
    target: Target,
    principal: Principal,
    summary: dict,
    *,
    case_count: int,
    purpose: str,
    dataset: Dataset | None,
) -> Evaluation:
    """The Evaluation row: what was evaluated (the target version, on which dataset), the summary of its
    cases (`scoring.summarize`) and who asked."""
    return Evaluation(
        id=evaluation_id,
        organ=target.organ,
        model_version_id=target.row.id if target.row else None,
        model_name=target.model_name,
        model_version=target.version,
        purpose=purpose,
        dataset_id=dataset.id if dataset else None,
        dataset_hash=dataset.dataset_hash if dataset else None,
        threshold=target.threshold,
        case_count=case_count,
        mean_dice=summary["mean_dice"],
        std_dice=summary["std_dice"],
        mean_iou=summary["mean_iou"],
        mean_hd95=summary["mean_hd95"],
        per_threshold=summary["per_threshold"],
        best_threshold=summary["best_threshold"],
        per_label=summary["per_label"],
        created_by=principal.actor,
        user_id=principal.user.id if principal.user else None,
        api_key_id=principal.api_key.id if principal.api_key else None,
        hospital=principal.hospital,
    )


def check_dataset_organ(organ: Organ) -> None:
    """Datasets hold 2-D image/label pairs: a 3-D organ's evaluation takes uploaded volumes instead (400)."""
    if organ.spec.volumetric:
        raise InvalidInput(
            f"organ {organ.name!r} is 3-D and datasets hold 2-D image pairs: upload the volumes instead "
            "(images: NIfTI files or zips of one DICOM series each; labels: NIfTI label volumes on those "
            "grids)",
            code="organ_needs_volume",
            params={"organ": organ.name},
        )


def volume_case_score(score: volume3d.VolumeScore) -> scoring.CaseScore:
    """A scored volume as a kept case's scores: Dice and IoU (also at every threshold) the means over labels,
    HD95 in mm the mean over labels (None unless every label's is known; no HD95 in pixels), the prediction
    the overlay's axial slice."""
    hd95 = [s["hd95_mm"] for s in score.per_label.values()]
    return scoring.CaseScore(
        score.dice, score.iou, None, {f"{t:.1f}": score.at[t][0] for t in THRESHOLDS},
        score.predicted_voxels, score.label_voxels, score.axial.prediction,
        hd95_mm=float(np.mean(hd95)) if None not in hd95 else None, per_label=score.per_label,
    )  # fmt: skip


class Evaluator:
    def __init__(self, dataplane: DataPlane, *, max_dataset_cases: int = 200):
        self.dataplane = dataplane
        self.max_dataset_cases = max_dataset_cases

    # --- what to evaluate -------------------------------------------------------------------------
    def target(self, session: Session, organ_name: str, version: str | None) -> Target:
        organ = self.dataplane.registry.get(organ_name)
        if version:
            row = model_registry.get_version(session, organ.name, version)
        else:
            row = model_registry.current_default(session, organ.name)
        if row is not None:
            threshold = (
                row.default_threshold if row.default_threshold is not None else organ.spec.default_threshold
            )
            return Target(organ.name, row.model_name, row.version, threshold, row)
        info = self.dataplane.registry.model(organ.name)
        return Target(
            organ.name, info.name, info.version, self.dataplane.registry.default_threshold(organ.name), None
        )

    def target_of(self, row: ModelVersion) -> Target:
        organ = self.dataplane.registry.get(row.organ)
        threshold = (
            row.default_threshold if row.default_threshold is not None else organ.spec.default_threshold
        )
        return Target(row.organ, row.model_name, row.version, threshold, row)

    # --- cases ----------------------------------------------------------------------------------------
    def upload_cases(self, images_: Sequence[Upload], labels: Sequence[Upload]) -> list[Case]:
        return labelled_cases(images_, labels, self.dataplane.max_evaluate_images)

    def dataset_cases(
        self, session: Session, dataset_id: str, expected_hash: str | None = None
    ) -> tuple[Dataset, list[Case]]:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None or dataset.status != "ready" or dataset.deleted_at is not None:
            raise NotFound(f"no dataset {dataset_id!r}", code="unknown_dataset", params={"id": dataset_id})
        store = self.dataplane.store
        bucket = store.buckets.datasets
        manifest = json.loads(store.get_bytes(bucket, dataset.manifest_key))
        if manifest.get("dataset_hash") != dataset.dataset_hash or (
            expected_hash is not None and manifest.get("dataset_hash") != expected_hash
        ):
            raise Conflict(
                f"dataset {dataset_id} no longer has the recorded hash; the reference set must be frozen "
                "(choose it again to accept the new content)",
                code="reference_set_changed",
            )
        pairs = manifest.get("pairs", [])
        if len(pairs) > self.max_dataset_cases:
            raise InvalidInput(
                f"dataset {dataset_id} has {len(pairs)} pairs; at most {self.max_dataset_cases} are "
                "evaluated at once",
                code="too_many_images",
                params={"count": len(pairs), "limit": self.max_dataset_cases},
            )
        cases = []
        for pair in pairs:
            image_key, mask_key = pair["image"]["key"], pair["mask"]["key"]
            cases.append(
                Case(
                    pair["name"],
                    Upload(image_key, store.get_bytes(bucket, f"{dataset_id}/{image_key}")),
                    Upload(mask_key, store.get_bytes(bucket, f"{dataset_id}/{mask_key}")),
                )
            )
        return dataset, cases

    # --- running ------------------------------------------------------------------------------------
    def evaluate_uploads(
        self,
        session: Session,
        principal: Principal,
        organ: str,
        version: str | None,
        images_: Sequence[Upload],
        labels: Sequence[Upload],
    ) -> Evaluation:
        target = self.target(session, organ, version)
        return self.run(session, principal, target, self.upload_cases(images_, labels))

    def evaluate_dataset(
        self,
        session: Session,
        principal: Principal,
        organ: str,
        version: ModelVersion | str | None,
        dataset_id: str,
        *,
        purpose: str = "test",
        expected_hash: str | None = None,
    ) -> Evaluation:
        target = (
            self.target_of(version)
            if isinstance(version, ModelVersion)
            else self.target(session, organ, version)
        )
        check_dataset_organ(self.dataplane.registry.get(target.organ))
        dataset, cases = self.dataset_cases(session, dataset_id, expected_hash)
        if dataset.organ != target.organ:
            raise InvalidInput(
                f"dataset {dataset_id} is a {dataset.organ} dataset, not {target.organ}",
                code="wrong_organ",
                params={"dataset_organ": dataset.organ, "organ": target.organ},
            )
        return self.run(session, principal, target, cases, purpose=purpose, dataset=dataset)

    def _predict(self, target: Target, data: bytes, filename: str) -> np.ndarray:
        dp = self.dataplane
        if len(data) > dp.max_upload_bytes:
            raise InvalidInput(
                f"{filename} is larger than {dp.max_upload_bytes} bytes",
                code="file_too_large",
                params={"name": filename, "limit": dp.max_upload_bytes},
            )
        height, width, _ = images.inspect(data, filename, max_pixels=dp.max_image_pixels)
        try:
            with self._served(target):
                png = dp.clients[target.organ].predict(target.model_name, data, version=target.version)
        except InvalidInput as exc:  # the organ server could not decode the pixels
            raise images.refused_by_organ(exc, filename) from None
        try:
            prob = images.decode_probability(png)
        except ValueError:
            raise ServiceUnavailable(
                f"organ server {target.organ!r} returned an invalid answer", code="organ_error"
            ) from None
        if prob.shape != (height, width):
            raise ServiceUnavailable(
                f"organ server {target.organ!r} returned a map of the wrong size", code="organ_error"
            )
        return prob

    @staticmethod
    @contextmanager
    def _served(target: Target) -> Iterator[None]:
        """The organ server's NotFound for the target's version: recorded, but not (or no longer) among the
        versions the organ server serves, a 409."""
        try:
            yield
        except NotFound:
            raise Conflict(
                f"the {target.organ} organ server does not serve {target.model_name} version "
                f"{target.version}; it serves the default, the version a rollback restores and the "
                f"{model_registry.MAX_SERVED_CANDIDATES} newest candidates (GET /api/v1/models/"
                f"{target.organ}/versions)",
                code="version_not_served",
            ) from None

    def run(
        self,
        session: Session,
        principal: Principal,
        target: Target,
        cases: list[Case],
        *,
        purpose: str = "test",
        dataset: Dataset | None = None,
    ) -> Evaluation:
        """Segment and score every case with the target version, then store the overlays and the Evaluation
        with its cases (`_store`), and count it in the metrics."""
        if not cases:
            raise InvalidInput("nothing to evaluate: no image/label pairs", code="missing_images")
        started = time.perf_counter()
        scored = self.score(target, cases)
        evaluation = self.store(session, principal, target, scored, purpose=purpose, dataset=dataset)
        metrics.observe_latency("evaluation", target.organ, target.version, started)
        metrics.observe_evaluation(target.organ, target.version, purpose, evaluation.mean_dice)
        return evaluation

    def score(
        self, target: Target, cases: Sequence[Case], step: Callable[[int, int], None] | None = None
    ) -> list[ScoredCase]:
        """Each case segmented by the target version, scored against its label at the target's threshold and
        drawn as an overlay. The loop is `dataplane.score_cases`, the one `DataPlane.evaluate` runs (a 3-D
        organ: `_score_volumes`). `step(done, total)` is called after each case (a background job's progress
        and cancel point)."""
        dp = self.dataplane
        if dp.registry.get(target.organ).spec.volumetric:
            return self._score_volumes(target, cases, step)
        window = dp.registry.get(target.organ).spec.window
        done = [0]

        def scored(case: Case, prob: np.ndarray, label: np.ndarray) -> ScoredCase:
            image = imaging.decode_image(case.image.data, window=window, max_pixels=dp.max_image_pixels)
            score = scoring.score_case(prob, label, target.threshold, image.spacing_mm)
            overlay = scoring.overlay_png(scoring.grey_preview(image.array), label, score.prediction)
            height, width = prob.shape
            done[0] += 1
            if step is not None:
                step(done[0], len(cases))
            return ScoredCase(case.name, score, overlay, width, height, image.spacing_mm)

        return score_cases(
            cases,
            lambda image: self._predict(target, image.data, image.filename),
            scored,
            max_image_pixels=dp.max_image_pixels,
        )

    def _score_volumes(
        self, target: Target, cases: Sequence[Case], step: Callable[[int, int], None] | None
    ) -> list[ScoredCase]:
        """A 3-D organ's cases, each volume scored as `DataPlane.evaluate` scores it (volume3d.score_volume)
        and drawn as an overlay of its axial slice with the most label voxels (volume3d.AxialSlice)."""
        dp = self.dataplane
        spec = dp.registry.get(target.organ).spec
        limits = volumes.StudyLimits(max_bytes=dp.max_upload_bytes)
        scored = []
        for done, case in enumerate(cases, start=1):
            with self._served(target):
                score = volume3d.score_volume(
                    dp.clients[target.organ],
                    spec,
                    case,
                    target.threshold,
                    version=target.version,
                    limits=limits,
                )
            axial = score.axial
            overlay = scoring.overlay_png(scoring.grey_preview(axial.image), axial.label, axial.prediction)
            scored.append(ScoredCase(case.name, volume_case_score(score), overlay, score.width, score.height))
            if step is not None:
                step(done, len(cases))
        return scored

    def store(
        self,
        session: Session,
        principal: Principal,
        target: Target,
        scored: list[ScoredCase],
        *,
        purpose: str,
        dataset: Dataset | None,
        before_commit: Callable[[Session, Evaluation], None] | None = None,
    ) -> Evaluation:
        """Write the overlays, then the Evaluation, its cases and the audit entry in one commit (with what
        `before_commit` adds, e.g. the job that made it marked done). When anything fails the session is
        rolled back and the overlays written so far are removed: no row names a missing object."""
        evaluation_id = uuid.uuid4()
        summary = scoring.summarize([case.score for case in scored])
        written: list[str] = []
        try:
            rows = self._write_overlays(evaluation_id, scored, written)
            evaluation = evaluation_row(
                evaluation_id, target, principal, summary,
                case_count=len(rows), purpose=purpose, dataset=dataset,
            )  # fmt: skip
            session.add(evaluation)
            session.flush()  # the evaluation's row first: its cases refer to it
            session.add_all(rows)
            self._audit_evaluation(session, principal, target, evaluation_id, len(rows), summary, purpose)
            if before_commit is not None:
                session.flush()
                before_commit(session, evaluation)
            commit(session)
        except BaseException:
            session.rollback()
            self.dataplane.remove_results(written)
            raise
        return evaluation

    @staticmethod
    def _audit_evaluation(
        session: Session,
        principal: Principal,
        target: Target,
        evaluation_id: uuid.UUID,
        cases: int,
        summary: dict,
        purpose: str,
    ) -> None:
        """The "model.evaluate" audit entry of an evaluation (committed with its rows)."""
        audit(
            session,
            principal.actor,
            "model.evaluate",
            f"evaluation:{evaluation_id}",
            {
                "organ": target.organ,
                "version": target.version,
                "cases": cases,
                "mean_dice": summary["mean_dice"],
                "purpose": purpose,
            },
        )

    def _write_overlays(
        self, evaluation_id: uuid.UUID, scored: list[ScoredCase], written: list[str]
    ) -> list[EvaluationCase]:
        """Store each case's overlay in the results bucket, appending its key to `written` as soon as the
        object exists (so a failure later removes it), and return the case rows that name them."""
        dp = self.dataplane
        dp.store.ensure_buckets()
        rows = []
        for n, case in enumerate(scored):
            key = overlay_key(evaluation_id, n)
            dp.store.put_bytes(dp.results_bucket, key, case.overlay_png, content_type="image/png")
            written.append(key)
            rows.append(case_row(evaluation_id, case, key))
        return rows


# --- reading and comparing --------------------------------------------------------------------------------
def get_evaluation(session: Session, principal: Principal, evaluation_id: str) -> Evaluation:
    """The evaluation if the caller reaches it (access.EVALUATION_READ); 404 otherwise, as for none."""
    missing = NotFound(f"no evaluation {evaluation_id!r}", code="unknown_evaluation")
    try:
        key = uuid.UUID(str(evaluation_id))
    except ValueError:
        raise missing from None
    return tenancy.get(session, principal, EVALUATION_READ, key, missing)


def cases_of(session: Session, evaluation: Evaluation) -> list[EvaluationCase]:
    return list(
        session.scalars(
            select(EvaluationCase)
            .where(EvaluationCase.evaluation_id == evaluation.id)
            .order_by(EvaluationCase.id)
        )
    )


def list_evaluations(
    session: Session,
    principal: Principal,
    organ: str | None = None,
    version: str | None = None,
    limit: int = 50,
) -> list[Evaluation]:
    query = (
        select(Evaluation)
        .where(tenancy.where(principal, EVALUATION_READ))
        .order_by(Evaluation.created_at.desc())
        .limit(limit)
    )
    if organ:
        query = query.where(Evaluation.organ == organ)
    if version:
        query = query.where(Evaluation.model_version == version)
    return list(session.scalars(query))


def compare(session: Session, principal: Principal, a_id: str, b_id: str) -> dict:
    """Paired comparison of evaluation `a` against `b` on the cases both scored (matched by name)."""
    a, b = get_evaluation(session, principal, a_id), get_evaluation(session, principal, b_id)
    if a.organ != b.organ:
        raise InvalidInput(
            f"evaluation {a.id} is {a.organ}, {b.id} is {b.organ}: compare one organ",
            code="compare_organs_differ",
        )
    cases_a = {c.name: c for c in cases_of(session, a)}
    cases_b = {c.name: c for c in cases_of(session, b)}
    common = sorted(set(cases_a) & set(cases_b))
    if not common:
        raise InvalidInput(
            "the two evaluations share no case (cases are matched by name)", code="no_common_cases"
        )
    rows, wins, losses, ties = [], 0, 0, 0
    for name in common:
        diff = cases_a[name].dice - cases_b[name].dice
        outcome = "win" if diff > TIE else "loss" if diff < -TIE else "tie"
        wins, losses, ties = (
            wins + (outcome == "win"),
            losses + (outcome == "loss"),
            ties + (outcome == "tie"),
        )
        rows.append(
            {
                "case": name,
                "dice_a": cases_a[name].dice,
                "dice_b": cases_b[name].dice,
                "difference": diff,
                "outcome": outcome,
            }
        )
    diffs = np.array([r["difference"] for r in rows])
    return {
        "a": a,
        "b": b,
        "cases": rows,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "mean_difference": float(diffs.mean()),
        "same_dataset": a.dataset_hash is not None and a.dataset_hash == b.dataset_hash,
        "only_in_a": sorted(set(cases_a) - set(cases_b)),
        "only_in_b": sorted(set(cases_b) - set(cases_a)),
    }
