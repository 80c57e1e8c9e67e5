"""Who may call what: one row per operation of the public API, read by both edges.

`OPERATIONS["organs.list"]` says who may call the operation (`Access`: people by role, API keys by scope;
None for the few that anyone may call, e.g. signing in) and where it is served: its HTTP route (method, path
under /api/v1) and its medseg.v1 gRPC method ("Service/Method"), when it has one. The HTTP routes declare
their dependency from the entry (`require(ACCESS["organs.list"])`, gateway/api/deps.py), the gRPC
servicers admit the caller by the same entry, and tests/api/test_parity.py iterates the table, so a route or
an RPC cannot be added, or admit other callers on one edge than on the other, without the table saying so.

A plain dict of frozen dataclasses, so that later rules (e.g. the caller's relation to the row: own, same
hospital, other) are one more field per entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.principal import Access

PEOPLE = ("doctor", "researcher", "admin")
RESEARCH = ("researcher", "admin")

SIGNED_IN = Access(PEOPLE)  # one's own account: people only, API keys have none
ADMIN = Access(("admin",), ("admin",))
# Reading the organs and their models is part of segmenting or evaluating: any of these scopes will do.
MODEL_READER = Access(PEOPLE, ("models", "segment", "evaluate"))
MODEL_WRITER = Access(RESEARCH, ("models",))  # record, promote, roll back, set the reference set
SEGMENTER = Access(PEOPLE, ("segment",))
EVALUATOR = Access(PEOPLE, ("evaluate",))
HISTORY_READER = Access(PEOPLE, ("segment",))
# The doctor who made the segmentation, or the hospital system (key) that made it for them.
THRESHOLD_CHOOSER = Access(("doctor",), ("segment",))
FEEDBACK = Access(PEOPLE, ("feedback",))
TRAINING = Access(RESEARCH, ("train",))
DATASET_UPLOADER = Access(("doctor",), ("datasets",))
DATASET_READER = Access(PEOPLE, ("datasets",))
DATASET_DELETER = Access(("doctor", "admin"), ("datasets",))


@dataclass(frozen=True)
class Operation:
    """One operation: who may call it, its HTTP route and its gRPC method (None where it has none)."""

    access: Access | None  # None: anyone, without credentials
    http: tuple[str, str] | None = None  # (method, path under /api/v1)
    grpc: str | None = None  # medseg.v1 "Service/Method"


OPERATIONS: dict[str, Operation] = {
    # --- organs, segmenting, evaluating at once (protos/medseg/v1/segmentation.proto)
    "organs.list": Operation(MODEL_READER, ("GET", "/organs"), "Segmentation/ListOrgans"),
    "segment": Operation(SEGMENTER, ("POST", "/segment"), "Segmentation/Segment"),
    "evaluate": Operation(EVALUATOR, ("POST", "/evaluate"), "Segmentation/Evaluate"),
    # --- accounts: one's own
    "accounts.register": Operation(None, ("POST", "/auth/register")),
    "accounts.sign_in": Operation(None, ("POST", "/auth/sign-in")),
    "accounts.sign_out": Operation(SIGNED_IN, ("POST", "/auth/sign-out")),
    "accounts.me": Operation(SIGNED_IN, ("GET", "/users/me")),
    "accounts.update_me": Operation(SIGNED_IN, ("PATCH", "/users/me")),
    "accounts.change_password": Operation(SIGNED_IN, ("POST", "/users/me/password")),
    # --- users, API keys, audit log: administration
    "users.list": Operation(ADMIN, ("GET", "/users")),
    "users.administer": Operation(ADMIN, ("PATCH", "/users/{user_id}")),
    "keys.list": Operation(ADMIN, ("GET", "/api-keys")),
    "keys.create": Operation(ADMIN, ("POST", "/api-keys")),
    "keys.revoke": Operation(ADMIN, ("DELETE", "/api-keys/{prefix}")),
    "audit.list": Operation(ADMIN, ("GET", "/audit")),
    "audit.export": Operation(ADMIN, ("GET", "/audit/export.csv")),
    # --- datasets
    "datasets.upload": Operation(DATASET_UPLOADER, ("POST", "/datasets")),
    "datasets.list": Operation(DATASET_READER, ("GET", "/datasets")),
    "datasets.show": Operation(DATASET_READER, ("GET", "/datasets/{dataset_id}")),
    "datasets.delete": Operation(DATASET_DELETER, ("DELETE", "/datasets/{dataset_id}")),
    # --- model versions (protos/medseg/v1/clinic.proto from here on)
    "models.versions.list": Operation(
        MODEL_READER, ("GET", "/models/{organ}/versions"), "Models/ListVersions"
    ),
    "models.versions.record": Operation(
        MODEL_WRITER, ("POST", "/models/{organ}/versions"), "Models/RecordVersion"
    ),
    "models.versions.show": Operation(
        MODEL_READER, ("GET", "/models/{organ}/versions/{version}"), "Models/GetVersion"
    ),
    "models.promote": Operation(
        MODEL_WRITER, ("POST", "/models/{organ}/versions/{version}/promote"), "Models/Promote"
    ),
    "models.rollback": Operation(MODEL_WRITER, ("POST", "/models/{organ}/rollback"), "Models/Rollback"),
    "models.reference_set.set": Operation(
        MODEL_WRITER, ("PUT", "/models/{organ}/reference-set"), "Models/SetReferenceSet"
    ),
    "models.reference_set.show": Operation(
        MODEL_READER, ("GET", "/models/{organ}/reference-set"), "Models/GetReferenceSet"
    ),
    "models.suggested_threshold": Operation(
        MODEL_READER, ("GET", "/models/{organ}/suggested-threshold"), "Models/GetSuggestedThreshold"
    ),
    # --- evaluations, kept
    "evaluations.run": Operation(EVALUATOR, ("POST", "/evaluations"), "Evaluations/RunEvaluation"),
    "evaluations.list": Operation(EVALUATOR, ("GET", "/evaluations"), "Evaluations/ListEvaluations"),
    "evaluations.compare": Operation(
        EVALUATOR, ("GET", "/evaluations/compare"), "Evaluations/CompareEvaluations"
    ),
    "evaluations.show": Operation(
        EVALUATOR, ("GET", "/evaluations/{evaluation_id}"), "Evaluations/GetEvaluation"
    ),
    "evaluations.overlay": Operation(
        EVALUATOR,
        ("GET", "/evaluations/{evaluation_id}/cases/{case_id}/overlay.png"),
        "Evaluations/GetOverlay",
    ),
    # --- feedback on model versions
    "feedback.create": Operation(
        FEEDBACK, ("POST", "/models/{organ}/versions/{version}/feedback"), "Feedback/CreateFeedback"
    ),
    "feedback.list": Operation(FEEDBACK, ("GET", "/feedback"), "Feedback/ListFeedback"),
    "feedback.show": Operation(FEEDBACK, ("GET", "/feedback/{feedback_id}"), "Feedback/GetFeedback"),
    "feedback.reply": Operation(FEEDBACK, ("POST", "/feedback/{feedback_id}/replies"), "Feedback/Reply"),
    "feedback.update": Operation(FEEDBACK, ("PATCH", "/feedback/{feedback_id}"), "Feedback/UpdateFeedback"),
    # --- segmentation history
    "segmentations.list": Operation(HISTORY_READER, ("GET", "/segmentations"), "History/ListSegmentations"),
    "segmentations.choose_threshold": Operation(
        THRESHOLD_CHOOSER, ("POST", "/segmentations/{segmentation_id}/choice"), "History/ChooseThreshold"
    ),
    "segmentations.thumbnail": Operation(
        HISTORY_READER, ("GET", "/segmentations/{segmentation_id}/thumbnail.png"), "History/GetThumbnail"
    ),
    "segmentations.mask": Operation(
        HISTORY_READER, ("GET", "/segmentations/{segmentation_id}/mask.png"), "History/GetMask"
    ),
    "segmentations.trend": Operation(
        HISTORY_READER, ("GET", "/patients/{patient_id}/trend"), "History/GetPatientTrend"
    ),
    # --- training jobs
    "training.architectures": Operation(TRAINING, ("GET", "/training/architectures")),
    "training.jobs.list": Operation(TRAINING, ("GET", "/training/jobs"), "Training/ListJobs"),
    "training.jobs.start": Operation(TRAINING, ("POST", "/training/jobs"), "Training/StartJob"),
    "training.jobs.show": Operation(TRAINING, ("GET", "/training/jobs/{job_id}"), "Training/GetJob"),
    "training.jobs.cancel": Operation(
        TRAINING, ("POST", "/training/jobs/{job_id}/cancel"), "Training/CancelJob"
    ),
}

# Who may call each operation that needs credentials: what `require` and the gRPC servicers read.
ACCESS: dict[str, Access] = {name: op.access for name, op in OPERATIONS.items() if op.access is not None}
