"""Testing a model version on labelled cases, kept and comparable.

Cases come from an upload (images + labels matched by file name, as `POST /api/v1/evaluate`) or from a
stored dataset (its manifest's pairs in the datasets bucket). Each case is segmented by the organ server
at the requested version, scored (gateway.service.scoring: Dice, IoU, HD95, Dice per threshold) and drawn
as an overlay stored in the results bucket under `evaluations/<id>/`. Objects are written before the rows
and removed again when the rows cannot be written.

Comparison pairs two evaluations case by case (by case name): per case which version wins, and the totals.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from gateway import metrics
from gateway.core.db import database_unavailable
from gateway.models import Dataset, Evaluation, EvaluationCase, ModelVersion, audit
from gateway.principal import Principal
from gateway.service import images, scoring
from gateway.service.dataplane import DataPlane, Upload, _pair_key, pair_by_name
from services import imaging

logger = logging.getLogger(__name__)

TIE = 1e-9


@dataclass(frozen=True)
class Case:
    name: str
    image: Upload
    label: Upload


@dataclass(frozen=True)
class Target:
    """What is evaluated: a recorded version (row) or, for an organ without one, what the organ serves."""

    organ: str
    model_name: str
    version: str
    threshold: float
    row: ModelVersion | None


class Evaluator:
    def __init__(self, dataplane: DataPlane, *, max_dataset_cases: int = 200):
        self.dataplane = dataplane
        self.max_dataset_cases = max_dataset_cases

    # --- what to evaluate -------------------------------------------------------------------------
    def target(self, session: Session, organ_name: str, version: str | None) -> Target:
        from gateway.service import model_registry

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
        pairs = pair_by_name(images_, labels, self.dataplane.max_evaluate_images)
        return [Case(_pair_key(image.filename, label=False), image, label) for image, label in pairs]

    def dataset_cases(
        self, session: Session, dataset_id: str, expected_hash: str | None = None
    ) -> tuple[Dataset, list[Case]]:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None or dataset.status != "ready" or dataset.deleted_at is not None:
            raise NotFound(f"no dataset {dataset_id!r}", code="unknown_dataset")
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
        dataset, cases = self.dataset_cases(session, dataset_id, expected_hash)
        if dataset.organ != target.organ:
            raise InvalidInput(
                f"dataset {dataset_id} is a {dataset.organ} dataset, not {target.organ}", code="wrong_organ"
            )
        return self.run(session, principal, target, cases, purpose=purpose, dataset=dataset)

    def _predict(self, target: Target, data: bytes, filename: str, window) -> np.ndarray:
        dp = self.dataplane
        if len(data) > dp.max_upload_bytes:
            raise InvalidInput(
                f"{filename} is larger than {dp.max_upload_bytes} bytes", code="payload_too_large"
            )
        height, width, _ = images.inspect(data, filename, max_pixels=dp.max_image_pixels, window=window)
        try:
            png = dp.clients[target.organ].predict(target.model_name, data, version=target.version)
        except NotFound:
            raise ServiceUnavailable(
                f"the {target.organ} organ server has no {target.model_name} version {target.version} loaded",
                code="model_not_ready",
            ) from None
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
        if not cases:
            raise InvalidInput("nothing to evaluate: no image/label pairs", code="missing_images")
        started = time.perf_counter()
        organ = self.dataplane.registry.get(target.organ)
        dp = self.dataplane
        eval_id = uuid.uuid4()
        scored: list[tuple[Case, scoring.CaseScore, bytes, tuple[int, int]]] = []
        for case in cases:
            try:
                label = images.decode_label(
                    case.label.data, case.label.filename, max_pixels=dp.max_image_pixels
                )
            except InvalidInput as exc:
                raise InvalidInput(f"label {case.label.filename!r}: {exc.message}", code=exc.code) from None
            try:
                prob = self._predict(target, case.image.data, case.image.filename, organ.spec.window)
            except InvalidInput as exc:
                raise InvalidInput(f"image {case.image.filename!r}: {exc.message}", code=exc.code) from None
            if label.shape != prob.shape:
                raise InvalidInput(
                    f"label {case.label.filename!r} is {label.shape[1]}x{label.shape[0]} but image "
                    f"{case.image.filename!r} is {prob.shape[1]}x{prob.shape[0]}; they must be the same size",
                    code="size_mismatch",
                )
            score = scoring.score_case(prob, label, target.threshold)
            grey = scoring.grey_preview(
                imaging.decode_image(
                    case.image.data, window=organ.spec.window, max_pixels=dp.max_image_pixels
                ).array
            )
            scored.append((case, score, scoring.overlay_png(grey, label, score.prediction), prob.shape))
        summary = scoring.summarize([s for _, s, _, _ in scored])

        written: list[str] = []
        try:
            dp.store.ensure_buckets()
            rows = []
            for n, (case, score, overlay, (height, width)) in enumerate(scored):
                key = f"evaluations/{eval_id}/{n:04d}.png"
                dp.store.put_bytes(dp.results_bucket, key, overlay, content_type="image/png")
                written.append(key)
                rows.append(
                    EvaluationCase(
                        evaluation_id=eval_id,
                        name=case.name[:256],
                        dice=score.dice,
                        iou=score.iou,
                        hd95=score.hd95,
                        dice_at=score.dice_at,
                        width=width,
                        height=height,
                        predicted_px=score.predicted_px,
                        label_px=score.label_px,
                        overlay_key=key,
                    )
                )
            evaluation = Evaluation(
                id=eval_id,
                organ=target.organ,
                model_version_id=target.row.id if target.row else None,
                model_name=target.model_name,
                model_version=target.version,
                purpose=purpose,
                dataset_id=dataset.id if dataset else None,
                dataset_hash=dataset.dataset_hash if dataset else None,
                threshold=target.threshold,
                case_count=len(rows),
                mean_dice=summary["mean_dice"],
                std_dice=summary["std_dice"],
                mean_iou=summary["mean_iou"],
                mean_hd95=summary["mean_hd95"],
                per_threshold=summary["per_threshold"],
                best_threshold=summary["best_threshold"],
                created_by=principal.actor,
                user_id=principal.user.id if principal.user else None,
                api_key_id=principal.api_key.id if principal.api_key else None,
            )
            session.add(evaluation)
            session.flush()
            session.add_all(rows)
            audit(
                session,
                principal.actor,
                "model.evaluate",
                f"evaluation:{eval_id}",
                {
                    "organ": target.organ,
                    "version": target.version,
                    "cases": len(rows),
                    "mean_dice": summary["mean_dice"],
                    "purpose": purpose,
                },
            )
            self._commit(session)
        except BaseException:
            session.rollback()
            for key in written:
                try:
                    dp.store.delete(dp.results_bucket, key)
                except Exception as exc:  # the store is probably down; objects without a row are harmless
                    logger.warning("could not remove orphaned overlay %s: %s", key, exc)
            raise
        metrics.observe_latency("evaluation", target.organ, target.version, started)
        metrics.observe_evaluation(target.organ, target.version, purpose, evaluation.mean_dice)
        return evaluation

    @staticmethod
    def _commit(session: Session) -> None:
        from sqlalchemy.exc import OperationalError

        try:
            session.commit()
        except OperationalError as exc:
            raise database_unavailable(exc) from exc


# --- reading and comparing --------------------------------------------------------------------------------
def get_evaluation(session: Session, evaluation_id: str) -> Evaluation:
    try:
        key = uuid.UUID(str(evaluation_id))
    except ValueError:
        raise NotFound(f"no evaluation {evaluation_id!r}", code="unknown_evaluation") from None
    row = session.get(Evaluation, key)
    if row is None:
        raise NotFound(f"no evaluation {evaluation_id!r}", code="unknown_evaluation")
    return row


def cases_of(session: Session, evaluation: Evaluation) -> list[EvaluationCase]:
    return list(
        session.scalars(
            select(EvaluationCase)
            .where(EvaluationCase.evaluation_id == evaluation.id)
            .order_by(EvaluationCase.id)
        )
    )


def list_evaluations(
    session: Session, organ: str | None = None, version: str | None = None, limit: int = 50
) -> list[Evaluation]:
    query = select(Evaluation).order_by(Evaluation.created_at.desc()).limit(limit)
    if organ:
        query = query.where(Evaluation.organ == organ)
    if version:
        query = query.where(Evaluation.model_version == version)
    return list(session.scalars(query))


def compare(session: Session, a_id: str, b_id: str) -> dict:
    """Paired comparison of evaluation `a` against `b` on the cases both scored (matched by name)."""
    a, b = get_evaluation(session, a_id), get_evaluation(session, b_id)
    if a.organ != b.organ:
        raise InvalidInput(
            f"evaluation {a.id} is {a.organ}, {b.id} is {b.organ}: compare one organ", code="wrong_organ"
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
