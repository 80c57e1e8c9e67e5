"""Who may call what: one row per operation of the public API, read by both edges.

`OPERATIONS["organs.list"]` says who may call the operation (`Access`: people by role, API keys by scope;
None for the few that anyone may call, e.g. signing in) and where it is served: its HTTP route (method, path
under /api/v1) and its medseg.v1 gRPC method ("Service/Method"), when it has one. The HTTP routes declare
their dependency from the entry (`require(ACCESS["organs.list"])`, gateway/api/deps.py), the gRPC
servicers admit the caller by the same entry, and tests/api/test_parity.py iterates the table, so a route or
an RPC cannot be added, or admit other callers on one edge than on the other, without the table saying so.

Each entry also says which rows the operation may reach (`rows`): a `Rows` rule (resource × action ×
kind of caller → the relations to the row that admit it: own, same hospital, shared, any), enforced in one
place (gateway/tenancy.py: `visible` for one row, `where` for a list, 404 for a row the caller may not see),
or, for operations on no hospital's rows, a sentence saying why none applies; a request field that needs a
stricter rule than its operation's names it in `fields` (sharing a feedback thread: its author only).
tests/api/test_tenancy_matrix.py walks every entry and field rule × every relation × both edges.
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
# The hospital's PACS (its archive of every patient's images): its doctors and its systems' keys, not
# researchers or admins. Submitting a study from it (studies.submit with a PACS series) asks the same.
PACS_READER = Access(("doctor",), ("segment",))


# --- which rows: the caller's relation to a row -------------------------------------------------------------
# own: made by the caller (the person, or the key); hospital: made for the caller's hospital by someone else;
# shared: shared with this kind of caller (gateway/tenancy.py `SHARED`: a thread its author shares with their
# hospital's doctors; for researchers every dataset and thread, and the evaluations a thread attaches or a
# promotion ran); any: every row. A platform admin (role admin, or an admin-scoped key, without a hospital)
# reaches every row; an admin with a hospital administers that hospital's: its people (own: the admin's own
# account), its systems' API keys and its audit entries (gateway/models.py `audit`: each entry belongs to the
# hospital of the account or key it is about, else of whoever acted).
RELATIONS = ("own", "hospital", "shared", "any")
KINDS = ("doctor", "researcher", "admin", "key")  # admin: a hospital's admin; key: a hospital system's key


@dataclass(frozen=True)
class Rows:
    """The rows of `resource` an operation reaches (`action`: read, write, delete), per kind of caller."""

    # dataset | evaluation | evaluation_job | feedback | segmentation | study | user | api_key | audit
    resource: str
    action: str
    doctor: frozenset[str] = frozenset()
    researcher: frozenset[str] = frozenset()
    admin: frozenset[str] = frozenset()
    key: frozenset[str] = frozenset()

    def relations(self, kind: str) -> frozenset[str]:
        """A platform admin reaches every row where a hospital's admin reaches theirs (none elsewhere)."""
        if kind == "platform":
            return frozenset(RELATIONS) if self.admin else frozenset()
        return getattr(self, kind)


def _r(*relations: str) -> frozenset[str]:
    assert set(relations) <= set(RELATIONS), relations
    return frozenset(relations)


OWN, HOSPITAL, OWN_OR_HOSPITAL = _r("own"), _r("own", "hospital"), _r("own", "hospital")
HOSPITAL_ONLY = _r("hospital")  # rows nobody owns: keys, audit entries
# Datasets are shared within the hospital and with the researchers (every dataset is submitted to them);
# the same rule admits the dataset an evaluation, a reference set or a training job takes.
DATASET_READ = Rows("dataset", "read", HOSPITAL, _r("own", "shared"), OWN_OR_HOSPITAL, OWN_OR_HOSPITAL)
DATASET_DELETE = Rows("dataset", "delete", OWN, _r(), OWN_OR_HOSPITAL, OWN)
# Evaluations: one's own; researchers also those a feedback thread attaches or a promotion ran.
EVALUATION_READ = Rows("evaluation", "read", OWN, _r("own", "shared"), OWN_OR_HOSPITAL, OWN_OR_HOSPITAL)
# Feedback: its author; that hospital's doctors if the author shares it; the researchers (all of it).
FEEDBACK_READ = Rows("feedback", "read", _r("own", "shared"), _r("shared"), OWN_OR_HOSPITAL, OWN_OR_HOSPITAL)
FEEDBACK_WRITE = Rows("feedback", "write", OWN, _r("shared"), OWN_OR_HOSPITAL, OWN_OR_HOSPITAL)
# Sharing a thread with the hospital's doctors (feedback.update's `shared`): its author only.
FEEDBACK_SHARE = Rows("feedback", "share", OWN, _r(), OWN, OWN)
# Segmentations: the doctor (or the key) who made them; the hospital's admin and systems.
SEGMENTATION_READ = Rows("segmentation", "read", OWN, OWN, OWN_OR_HOSPITAL, OWN_OR_HOSPITAL)
SEGMENTATION_WRITE = Rows("segmentation", "write", OWN, _r(), _r(), OWN)  # the threshold choice
# Studies (volumes) as segmentations: their maker's, and their hospital's admin and systems.
STUDY_READ = Rows("study", "read", OWN, OWN, OWN_OR_HOSPITAL, OWN_OR_HOSPITAL)
STUDY_WRITE = Rows("study", "write", OWN, _r(), _r(), OWN)  # the threshold choice: a doctor's, or their key's
# Cancelling: whoever submitted the study (anyone who may segment may submit one); a platform admin any.
STUDY_CANCEL = Rows("study", "write", OWN, OWN, OWN, OWN)
# Evaluation jobs (an evaluation run in the background) as evaluations: their maker's, and their hospital's
# admin and systems; cancelled by whoever submitted them.
EVALUATION_JOB_READ = Rows("evaluation_job", "read", OWN, OWN, OWN_OR_HOSPITAL, OWN_OR_HOSPITAL)
EVALUATION_JOB_CANCEL = Rows("evaluation_job", "write", OWN, OWN, OWN, OWN)
# Administration (admins only): a hospital's admin administers its people (own: their own account, which
# they may not disable or demote, gateway/resources/accounts/service.py), its keys and its audit entries.
USERS_READ = Rows("user", "read", admin=OWN_OR_HOSPITAL)
USERS_WRITE = Rows("user", "write", admin=OWN_OR_HOSPITAL)
KEYS_READ = Rows("api_key", "read", admin=HOSPITAL_ONLY)
KEYS_REVOKE = Rows("api_key", "delete", admin=HOSPITAL_ONLY)
AUDIT_READ = Rows("audit", "read", admin=HOSPITAL_ONLY)

# Operations that reach no hospital's rows say why (a sentence instead of a `Rows`).
ANYONE = "no rows: open to anyone"
ONESELF = "no rows: the caller's own account"
NEW_KEY = "makes a key of the caller's hospital (a platform admin: of any hospital, or of none)"
MODELS = "no hospital's rows: model versions and reference sets are the platform's"
STATELESS = "no rows: answered at once, nothing is kept"
TRAINING_ROWS = "no hospital's rows: training jobs are the research team's"
NEW_ROW = "makes a row owned by the caller and the caller's hospital"
PACS_ROWS = "no rows: the hospital's PACS is asked and nothing is kept (settings.pacs_hospitals: whose it is)"


@dataclass(frozen=True)
class Operation:
    """One operation: who may call it, its HTTP route and its gRPC method (None where it has none), and
    which rows it reaches (`Rows`, or why no rule applies; None fails tests/api/test_tenancy_matrix.py)."""

    access: Access | None  # None: anyone, without credentials
    http: tuple[str, str] | None = None  # (method, path under /api/v1)
    grpc: str | None = None  # medseg.v1 "Service/Method"
    rows: Rows | str | None = None
    # A field of the request with a rule of its own, stricter than `rows` (feedback.update's `shared`).
    fields: tuple[tuple[str, Rows], ...] = ()


OPERATIONS: dict[str, Operation] = {
    # --- organs, segmenting, evaluating at once (protos/medseg/v1/segmentation.proto)
    "organs.list": Operation(MODEL_READER, ("GET", "/organs"), "Segmentation/ListOrgans", rows=MODELS),
    "segment": Operation(SEGMENTER, ("POST", "/segment"), "Segmentation/Segment", rows=NEW_ROW),
    "evaluate": Operation(EVALUATOR, ("POST", "/evaluate"), "Segmentation/Evaluate", rows=STATELESS),
    # --- accounts: one's own
    "accounts.register": Operation(None, ("POST", "/auth/register"), rows=ANYONE),
    "accounts.sign_in": Operation(None, ("POST", "/auth/sign-in"), rows=ANYONE),
    "accounts.sign_out": Operation(SIGNED_IN, ("POST", "/auth/sign-out"), rows=ONESELF),
    "accounts.me": Operation(SIGNED_IN, ("GET", "/users/me"), rows=ONESELF),
    "accounts.update_me": Operation(SIGNED_IN, ("PATCH", "/users/me"), rows=ONESELF),
    "accounts.change_password": Operation(SIGNED_IN, ("POST", "/users/me/password"), rows=ONESELF),
    # --- users, API keys, audit log: administration
    "users.list": Operation(ADMIN, ("GET", "/users"), rows=USERS_READ),
    "users.administer": Operation(ADMIN, ("PATCH", "/users/{user_id}"), rows=USERS_WRITE),
    "keys.list": Operation(ADMIN, ("GET", "/api-keys"), rows=KEYS_READ),
    "keys.create": Operation(ADMIN, ("POST", "/api-keys"), rows=NEW_KEY),
    "keys.revoke": Operation(ADMIN, ("DELETE", "/api-keys/{prefix}"), rows=KEYS_REVOKE),
    "audit.list": Operation(ADMIN, ("GET", "/audit"), rows=AUDIT_READ),
    "audit.export": Operation(ADMIN, ("GET", "/audit/export.csv"), rows=AUDIT_READ),
    # --- datasets
    "datasets.upload": Operation(DATASET_UPLOADER, ("POST", "/datasets"), rows=NEW_ROW),
    "datasets.list": Operation(DATASET_READER, ("GET", "/datasets"), rows=DATASET_READ),
    "datasets.show": Operation(DATASET_READER, ("GET", "/datasets/{dataset_id}"), rows=DATASET_READ),
    "datasets.delete": Operation(DATASET_DELETER, ("DELETE", "/datasets/{dataset_id}"), rows=DATASET_DELETE),
    # --- model versions (protos/medseg/v1/clinic.proto from here on)
    "models.versions.list": Operation(
        MODEL_READER,
        ("GET", "/models/{organ}/versions"),
        "Models/ListVersions",
        rows=MODELS,
    ),
    "models.versions.record": Operation(
        MODEL_WRITER,
        ("POST", "/models/{organ}/versions"),
        "Models/RecordVersion",
        rows=MODELS,
    ),
    "models.versions.show": Operation(
        MODEL_READER,
        ("GET", "/models/{organ}/versions/{version}"),
        "Models/GetVersion",
        rows=MODELS,
    ),
    "models.promote": Operation(
        MODEL_WRITER,
        ("POST", "/models/{organ}/versions/{version}/promote"),
        "Models/Promote",
        rows=MODELS,
    ),
    "models.rollback": Operation(
        MODEL_WRITER, ("POST", "/models/{organ}/rollback"), "Models/Rollback", rows=MODELS
    ),
    "models.reference_set.set": Operation(
        MODEL_WRITER,
        ("PUT", "/models/{organ}/reference-set"),
        "Models/SetReferenceSet",
        rows=DATASET_READ,
    ),
    "models.reference_set.show": Operation(
        MODEL_READER,
        ("GET", "/models/{organ}/reference-set"),
        "Models/GetReferenceSet",
        rows=MODELS,
    ),
    "models.suggested_threshold": Operation(
        MODEL_READER,
        ("GET", "/models/{organ}/suggested-threshold"),
        "Models/GetSuggestedThreshold",
        rows=MODELS,
    ),
    # --- evaluations, kept
    "evaluations.run": Operation(
        EVALUATOR, ("POST", "/evaluations"), "Evaluations/RunEvaluation", rows=DATASET_READ
    ),
    "evaluations.list": Operation(
        EVALUATOR, ("GET", "/evaluations"), "Evaluations/ListEvaluations", rows=EVALUATION_READ
    ),
    "evaluations.compare": Operation(
        EVALUATOR,
        ("GET", "/evaluations/compare"),
        "Evaluations/CompareEvaluations",
        rows=EVALUATION_READ,
    ),
    "evaluations.show": Operation(
        EVALUATOR,
        ("GET", "/evaluations/{evaluation_id}"),
        "Evaluations/GetEvaluation",
        rows=EVALUATION_READ,
    ),
    "evaluations.overlay": Operation(
        EVALUATOR,
        ("GET", "/evaluations/{evaluation_id}/cases/{case_id}/overlay.png"),
        "Evaluations/GetOverlay",
        rows=EVALUATION_READ,
    ),
    # the evaluations run in the background (evaluations.run with `Prefer: respond-async`): HTTP's polling;
    # over gRPC RunEvaluation answers when done, within the client's deadline
    "evaluations.jobs.show": Operation(
        EVALUATOR, ("GET", "/evaluation-jobs/{job_id}"), None, rows=EVALUATION_JOB_READ
    ),
    "evaluations.jobs.cancel": Operation(
        EVALUATOR, ("POST", "/evaluation-jobs/{job_id}/cancel"), None, rows=EVALUATION_JOB_CANCEL
    ),
    # --- feedback on model versions
    "feedback.create": Operation(
        FEEDBACK,
        ("POST", "/models/{organ}/versions/{version}/feedback"),
        "Feedback/CreateFeedback",
        rows=EVALUATION_READ,
    ),
    "feedback.list": Operation(FEEDBACK, ("GET", "/feedback"), "Feedback/ListFeedback", rows=FEEDBACK_READ),
    "feedback.show": Operation(
        FEEDBACK, ("GET", "/feedback/{feedback_id}"), "Feedback/GetFeedback", rows=FEEDBACK_READ
    ),
    "feedback.reply": Operation(
        FEEDBACK, ("POST", "/feedback/{feedback_id}/replies"), "Feedback/Reply", rows=FEEDBACK_READ
    ),
    "feedback.update": Operation(
        FEEDBACK,
        ("PATCH", "/feedback/{feedback_id}"),
        "Feedback/UpdateFeedback",
        rows=FEEDBACK_WRITE,
        fields=(("shared", FEEDBACK_SHARE),),
    ),
    # --- segmentation history
    "segmentations.list": Operation(
        HISTORY_READER, ("GET", "/segmentations"), "History/ListSegmentations", rows=SEGMENTATION_READ
    ),
    "segmentations.choose_threshold": Operation(
        THRESHOLD_CHOOSER,
        ("POST", "/segmentations/{segmentation_id}/choice"),
        "History/ChooseThreshold",
        rows=SEGMENTATION_WRITE,
    ),
    "segmentations.thumbnail": Operation(
        HISTORY_READER,
        ("GET", "/segmentations/{segmentation_id}/thumbnail.png"),
        "History/GetThumbnail",
        rows=SEGMENTATION_READ,
    ),
    "segmentations.mask": Operation(
        HISTORY_READER,
        ("GET", "/segmentations/{segmentation_id}/mask.png"),
        "History/GetMask",
        rows=SEGMENTATION_READ,
    ),
    # the viewer's: the image a result was made from, its modality values (window/level), its nuclei; over
    # HTTP only (a browser's needs; gRPC callers have the masks and compute their own)
    "segmentations.image": Operation(
        HISTORY_READER, ("GET", "/segmentations/{segmentation_id}/image.png"), rows=SEGMENTATION_READ
    ),
    "segmentations.values": Operation(
        HISTORY_READER, ("GET", "/segmentations/{segmentation_id}/values.npy"), rows=SEGMENTATION_READ
    ),
    "segmentations.nuclei": Operation(
        HISTORY_READER, ("GET", "/segmentations/{segmentation_id}/nuclei"), rows=SEGMENTATION_READ
    ),
    "segmentations.trend": Operation(
        HISTORY_READER,
        ("GET", "/patients/{patient_id}/trend"),
        "History/GetPatientTrend",
        rows=SEGMENTATION_READ,
    ),
    # --- studies: volumes segmented as background jobs (protos/medseg/v1/studies.proto)
    "studies.submit": Operation(SEGMENTER, ("POST", "/studies"), "Studies/Submit", rows=NEW_ROW),
    "studies.list": Operation(HISTORY_READER, ("GET", "/studies"), "Studies/List", rows=STUDY_READ),
    "studies.show": Operation(HISTORY_READER, ("GET", "/studies/{study_id}"), "Studies/Get", rows=STUDY_READ),
    "studies.watch": Operation(HISTORY_READER, None, "Studies/Watch", rows=STUDY_READ),
    "studies.mask": Operation(
        HISTORY_READER, ("GET", "/studies/{study_id}/mask.nii.gz"), "Studies/GetMask", rows=STUDY_READ
    ),
    "studies.seg": Operation(
        HISTORY_READER, ("GET", "/studies/{study_id}/seg.dcm"), "Studies/GetSeg", rows=STUDY_READ
    ),
    "studies.image": Operation(
        HISTORY_READER, ("GET", "/studies/{study_id}/image.nii.gz"), "Studies/GetImage", rows=STUDY_READ
    ),
    "studies.cancel": Operation(
        SEGMENTER, ("POST", "/studies/{study_id}/cancel"), "Studies/Cancel", rows=STUDY_CANCEL
    ),
    "studies.choose_threshold": Operation(
        THRESHOLD_CHOOSER, ("POST", "/studies/{study_id}/choice"), "Studies/ChooseThreshold", rows=STUDY_WRITE
    ),
    # --- the hospital's PACS, for pickers (protos/medseg/v1/pacs.proto)
    "pacs.studies": Operation(PACS_READER, ("GET", "/pacs/studies"), "Pacs/SearchStudies", rows=PACS_ROWS),
    "pacs.series": Operation(
        PACS_READER, ("GET", "/pacs/studies/{study_uid}/series"), "Pacs/ListSeries", rows=PACS_ROWS
    ),
    "pacs.thumbnail": Operation(  # for the web picker: HTTP only, as a result's image.png
        PACS_READER, ("GET", "/pacs/studies/{study_uid}/series/{series_uid}/thumbnail.png"), rows=PACS_ROWS
    ),
    # --- training jobs
    "training.architectures": Operation(
        TRAINING, ("GET", "/training/architectures"), rows="no rows: the network registry's names"
    ),
    "training.jobs.list": Operation(
        TRAINING, ("GET", "/training/jobs"), "Training/ListJobs", rows=TRAINING_ROWS
    ),
    "training.jobs.start": Operation(
        TRAINING, ("POST", "/training/jobs"), "Training/StartJob", rows=DATASET_READ
    ),
    "training.jobs.show": Operation(
        TRAINING, ("GET", "/training/jobs/{job_id}"), "Training/GetJob", rows=TRAINING_ROWS
    ),
    "training.jobs.cancel": Operation(
        TRAINING,
        ("POST", "/training/jobs/{job_id}/cancel"),
        "Training/CancelJob",
        rows=TRAINING_ROWS,
    ),
}

# Who may call each operation that needs credentials: what `require` and the gRPC servicers read.
ACCESS: dict[str, Access] = {name: op.access for name, op in OPERATIONS.items() if op.access is not None}
