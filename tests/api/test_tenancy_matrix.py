"""The access table's row rules, walked: every operation × every relation × both edges, from one definition.

For each operation whose entry in gateway/access.py has a `Rows` rule (and each request field with a rule of
its own), each kind of caller (a doctor, a researcher, a hospital's admin, a platform admin, a hospital
system's key, a hospital's admin-scoped key) calls it on a fresh row in each relation to the caller (own,
same hospital, shared, other hospital) over HTTP, and the keys over gRPC too where the operation has an RPC.
The expected outcome is read from the rule itself: reached → success (a list holds the row); not reached but
seen (a write rule) → 403; not seen → 404 / NOT_FOUND (a list leaves it out).
`test_every_operation_has_a_rule` fails for an operation with no rule, and for a `Rows` operation or field
rule that has no call here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from gateway.access import (
    AUDIT_READ,
    DATASET_READ,
    EVALUATION_JOB_READ,
    EVALUATION_READ,
    FEEDBACK_READ,
    KEYS_READ,
    OPERATIONS,
    SEGMENTATION_READ,
    STUDY_READ,
    USERS_READ,
    Rows,
)
from gateway.models import (
    AuditLog,
    Dataset,
    Evaluation,
    EvaluationCase,
    EvaluationJob,
    Feedback,
    Segmentation,
    User,
)
from gateway.resources.accounts import service as accounts
from gateway.security import create_api_key
from gateway.service.masks import MASKS_OBJECT, THRESHOLDS, pack_masks
from gateway.service.views import VIEW_OBJECT
from services.imaging import encode_png
from tests.api.clinic_access import _no_training, _prepare, _version, ct_view, make_study
from tests.api.conftest import (
    HOSPITAL_A,
    HOSPITAL_B,
    PASSWORD,
    grpc_channel,
    small_dataset_zip,
    sqlite_database,
)
from tests.api.test_parity import HTTP_CALLS, Failure, Row, call_grpc

READ = {"dataset": DATASET_READ, "evaluation": EVALUATION_READ, "feedback": FEEDBACK_READ,
        "segmentation": SEGMENTATION_READ, "study": STUDY_READ, "evaluation_job": EVALUATION_JOB_READ,
        "user": USERS_READ, "api_key": KEYS_READ, "audit": AUDIT_READ}  # fmt: skip
KEY = "tenant_a"  # world.keys name of hospital A's system, with these scopes:
KEY_SCOPES = ("segment", "evaluate", "datasets", "feedback", "models", "train")
ADMIN_KEY = "tenant_a_admin"  # hospital A's admin-scoped key (an admin of that hospital, as a system)
OWNERLESS = ("api_key", "audit")  # rows nobody owns (gateway/tenancy.py RESOURCES)
PROBE = "matrix.probe"  # the action of the audit entries made here


# --- who: the callers (kind → caller) and the rows' makers -------------------------------------------------
@dataclass(frozen=True)
class Caller:
    kind: str  # the access table's kind: doctor | researcher | admin | platform | key
    name: str  # world.users name, or world.keys name for a key
    role: str | None  # None: a key
    hospital: str | None
    scopes: tuple[str, ...] = ()  # a key's


CALLERS = (
    Caller("doctor", "doctor", "doctor", HOSPITAL_A),
    Caller("researcher", "researcher", "researcher", None),
    Caller("admin", "admin_a", "admin", HOSPITAL_A),
    Caller("platform", "admin", "admin", None),
    Caller("key", KEY, None, HOSPITAL_A, KEY_SCOPES),
    Caller("admin", ADMIN_KEY, None, HOSPITAL_A, ("admin",)),
)
# relation → (who makes the row for this caller, the relations that row has to the caller)
OTHER = ("doctor_b", frozenset())


def _cases(caller: Caller, resource: str) -> dict[str, tuple[str, bool, frozenset[str]]]:
    """relation → (maker, shared flag, the relations the row has); only the relations that exist for it
    (administration: a row of the maker's hospital; a person's own account is the row `own`)."""
    own = {"own", "hospital"} if caller.hospital else {"own"}
    if caller.kind == "researcher" and resource in ("dataset", "feedback"):
        own.add("shared")  # every dataset and thread is shared with the researchers, their own too
    out = {}
    if resource not in OWNERLESS and not (resource == "user" and caller.role is None):
        out["own"] = (caller.name, False, frozenset(own))
    if caller.hospital:
        out["hospital"] = (
            "doctor_a2" if caller.name == "doctor" else "doctor",
            False,
            frozenset({"hospital"}),
        )
    if resource == "feedback" and caller.kind == "doctor":  # a thread its author shares with the hospital
        out["shared"] = ("doctor_a2", True, frozenset({"hospital", "shared"}))
    if caller.kind == "researcher" and resource in ("dataset", "evaluation", "feedback"):
        # every dataset and thread is for the researchers; of evaluations, those a promotion ran
        out["shared"] = ("doctor_b", True, frozenset({"shared"}))
        if resource == "evaluation":
            out["other"] = ("doctor_b", False, frozenset())
    else:
        out["other"] = ("doctor_b", False, frozenset())
    return out


# --- how: each operation's call on a row (args by the proto's field names) and what answers it ------------
@dataclass(frozen=True)
class Call:
    resource: str  # the kind of row it is called on (the rule's resource)
    args: object  # (world, row) -> args
    listed: object = None  # (answer, row) -> bool, for lists
    skip_kinds: tuple[str, ...] = ()  # refused by the service for another reason (said where)
    made: tuple[tuple[str, object], ...] = ()  # how the row is made where it matters (a study's status)


def _ids(key, field="id"):
    return lambda answer, row: row["id"] in [item[field] for item in answer[key]]


def _csv_ids(answer, row) -> bool:
    return str(row["id"]) in [line.split(",", 1)[0] for line in answer.splitlines()[1:]]


CALLS: dict[str, Call] = {
    "datasets.list": Call("dataset", lambda w, r: {}, _ids("datasets")),
    "datasets.show": Call("dataset", lambda w, r: {"id": r["id"]}),
    "datasets.delete": Call("dataset", lambda w, r: {"id": r["id"]}),
    "evaluations.run": Call("dataset", lambda w, r: {"organ": "liver", "dataset_id": r["id"]}),
    "models.reference_set.set": Call("dataset", lambda w, r: {"organ": "liver", "dataset_id": r["id"]}),
    "training.jobs.start": Call(
        "dataset",
        lambda w, r: {"organ": "liver", "dataset_id": r["id"], "arch": "erunet", "minutes": 1.0, "epochs": 1},
    ),
    "evaluations.list": Call("evaluation", lambda w, r: {"limit": 200}, _ids("evaluations")),
    "evaluations.show": Call("evaluation", lambda w, r: {"id": r["id"]}),
    "evaluations.compare": Call("evaluation", lambda w, r: {"a": r["id"], "b": r["id"]}),
    "evaluations.overlay": Call("evaluation", lambda w, r: {"evaluation_id": r["id"], "case_id": r["case"]}),
    "feedback.create": Call(
        "evaluation",
        lambda w, r: {
            "organ": "liver",
            "version": r["version"],
            "body": "see case",
            "evaluation_case_id": r["case"],
        },
        skip_kinds=(
            "researcher",
        ),  # researchers reply to feedback, they do not write it (403 whatever the row)
    ),  # fmt: skip
    "feedback.list": Call("feedback", lambda w, r: {}, _ids("feedback")),
    "feedback.show": Call("feedback", lambda w, r: {"id": r["id"]}),
    "feedback.reply": Call("feedback", lambda w, r: {"feedback_id": r["id"], "body": "thanks"}),
    "feedback.update": Call("feedback", lambda w, r: {"id": r["id"], "status": "in_progress"}),
    "segmentations.list": Call("segmentation", lambda w, r: {"limit": 200}, _ids("segmentations")),
    "segmentations.choose_threshold": Call(
        "segmentation", lambda w, r: {"segmentation_id": r["id"], "threshold": 0.5}
    ),
    "segmentations.thumbnail": Call("segmentation", lambda w, r: {"segmentation_id": r["id"]}),
    "segmentations.mask": Call("segmentation", lambda w, r: {"segmentation_id": r["id"], "threshold": 0.5}),
    "segmentations.image": Call("segmentation", lambda w, r: {"segmentation_id": r["id"]}),
    "segmentations.values": Call("segmentation", lambda w, r: {"segmentation_id": r["id"]}),
    "segmentations.nuclei": Call("segmentation", lambda w, r: {"segmentation_id": r["id"], "threshold": 0.5}),
    "segmentations.trend": Call(
        "segmentation", lambda w, r: {"patient_id": r["patient"]}, _ids("points", "segmentation_id")
    ),
    "studies.list": Call("study", lambda w, r: {"limit": 200}, _ids("studies")),
    "studies.show": Call("study", lambda w, r: {"id": r["id"]}),
    "studies.watch": Call("study", lambda w, r: {"id": r["id"]}),  # a finished study: one message
    "studies.mask": Call("study", lambda w, r: {"id": r["id"], "threshold": 0.5}),
    "studies.seg": Call("study", lambda w, r: {"id": r["id"]}, made=(("source", "dicom"),)),
    "studies.image": Call("study", lambda w, r: {"id": r["id"]}),
    "studies.cancel": Call("study", lambda w, r: {"id": r["id"]}, made=(("status", "queued"),)),
    "studies.choose_threshold": Call("study", lambda w, r: {"id": r["id"], "threshold": 0.5}),
    "evaluations.jobs.show": Call("evaluation_job", lambda w, r: {"job_id": r["id"]}),
    "evaluations.jobs.cancel": Call("evaluation_job", lambda w, r: {"job_id": r["id"]}),
    # a request field with a rule of its own: "<operation>[<field>]"
    "feedback.update[shared]": Call("feedback", lambda w, r: {"id": r["id"], "shared": True}),
    # administration
    "users.list": Call("user", lambda w, r: {}, _ids("users")),
    "users.administer": Call("user", lambda w, r: {"user_id": r["id"], "status": "active"}),
    "keys.list": Call("api_key", lambda w, r: {}, _ids("api_keys", "prefix")),
    "keys.revoke": Call("api_key", lambda w, r: {"prefix": r["id"]}),
    "audit.list": Call("audit", lambda w, r: {"action": PROBE, "limit": 1000}, _ids("entries")),
    "audit.export": Call("audit", lambda w, r: {"action": PROBE}, _csv_ids),
}
HTTP_ONLY = {  # the operations without an RPC, which tests/api/test_parity.py's HTTP_CALLS leaves out
    "evaluations.jobs.show": lambda c, a: c.get(f"/api/v1/evaluation-jobs/{a['job_id']}"),
    "evaluations.jobs.cancel": lambda c, a: c.post(f"/api/v1/evaluation-jobs/{a['job_id']}/cancel"),
    "datasets.list": lambda c, a: c.get("/api/v1/datasets"),
    "segmentations.image": lambda c, a: c.get(f"/api/v1/segmentations/{a['segmentation_id']}/image.png"),
    "segmentations.values": lambda c, a: c.get(f"/api/v1/segmentations/{a['segmentation_id']}/values.npy"),
    "segmentations.nuclei": lambda c, a: c.get(
        f"/api/v1/segmentations/{a['segmentation_id']}/nuclei", params={"threshold": a["threshold"]}
    ),
    "datasets.show": lambda c, a: c.get(f"/api/v1/datasets/{a['id']}"),
    "datasets.delete": lambda c, a: c.delete(f"/api/v1/datasets/{a['id']}"),
    "feedback.update[shared]": lambda c, a: c.patch(
        f"/api/v1/feedback/{a['id']}", json={"shared": a["shared"]}
    ),
    "users.list": lambda c, a: c.get("/api/v1/users"),
    "users.administer": lambda c, a: c.patch(f"/api/v1/users/{a['user_id']}", json={"status": a["status"]}),
    "keys.list": lambda c, a: c.get("/api/v1/api-keys"),
    "keys.revoke": lambda c, a: c.delete(f"/api/v1/api-keys/{a['prefix']}"),
    "audit.list": lambda c, a: c.get("/api/v1/audit", params=a),
    "audit.export": lambda c, a: c.get("/api/v1/audit/export.csv", params=a),
}


def operation(call_name: str) -> str:
    """The access table's operation of a call ("feedback.update[shared]" → "feedback.update")."""
    return call_name.split("[", 1)[0]


def rule_of(call_name: str) -> Rows:
    """The rule a call walks: the operation's, or its field's ("feedback.update[shared]")."""
    op = OPERATIONS[operation(call_name)]
    if "[" in call_name:
        return dict(op.fields)[call_name[call_name.index("[") + 1 : -1]]
    return op.rows


# --- the rows -------------------------------------------------------------------------------------------
def _owner(world, maker: str) -> tuple[dict, str | None]:
    if maker in world.users:
        return {"user": world.users[maker].id, "key": None}, world.users[maker].hospital
    return {"user": None, "key": world.key_rows[maker].id}, world.key_rows[maker].hospital


def _make(world, resource: str, maker: str, shared: bool, relation: str, made: dict) -> dict:
    who, hospital = _owner(world, maker)
    store, rid = world.store, uuid.uuid4()
    if resource in ("user", "api_key", "audit"):
        return _make_administered(world, resource, maker, hospital, relation, rid)
    if resource == "study":
        study = make_study(world, user_id=who["user"], api_key_id=who["key"], hospital=hospital, **made)
        return {"id": study}
    if resource == "evaluation_job":  # queued, with no worker to take it (the world's settings have none)
        with world.session() as session:
            session.add(EvaluationJob(
                id=rid, organ="liver", model_version="acc", case_count=1, created_by=maker,
                user_id=who["user"], api_key_id=who["key"], hospital=hospital,
            ))  # fmt: skip
        return {"id": str(rid)}
    with world.session() as session:
        if resource == "dataset":  # a copy of the template dataset's objects under a new id
            template = session.get(Dataset, world._tenancy_template)
            new_id = f"liver-{rid.hex[:12]}"
            for (bucket, key), data in list(store.objects.items()):
                if key.startswith(f"{template.id}/"):
                    store.objects[(bucket, f"{new_id}/{key[len(template.id) + 1 :]}")] = data
            session.add(Dataset(
                id=new_id, organ="liver", name="t", pair_count=template.pair_count,
                size_bytes=template.size_bytes, dataset_hash=template.dataset_hash,
                manifest_key=f"{new_id}/{template.manifest_key.split('/', 1)[1]}", hospital=hospital,
                uploaded_by_user_id=who["user"], uploaded_by_api_key_id=who["key"],
            ))  # fmt: skip
            return {"id": new_id}
        if resource == "evaluation":
            key = f"evaluations/{rid}/0000.png"
            store.put_bytes("medseg-results", key, b"\x89PNG\r\n\x1a\nfake")
            session.add(Evaluation(
                id=rid, organ="liver", model_name="liver", model_version="acc", threshold=0.5, case_count=1,
                mean_dice=0.9, std_dice=0.0, mean_iou=0.8, best_threshold=0.5, created_by=maker,
                per_threshold=[{"threshold": 0.5, "mean_dice": 0.9, "best": True}],
                purpose="promotion" if shared else "test",
                user_id=who["user"], api_key_id=who["key"], hospital=hospital,
            ))  # fmt: skip
            session.flush()
            case = EvaluationCase(
                evaluation_id=rid, name="a", dice=0.9, iou=0.8, dice_at={"0.5": 0.9},
                width=32, height=32, predicted_px=10, label_px=10, overlay_key=key,
            )  # fmt: skip
            session.add(case)
            session.flush()
            return {"id": str(rid), "case": case.id, "version": world._tenancy_version}
        if resource == "feedback":
            row = Feedback(model_version_id=world._tenancy_version_id, body="P-0042: part missing",
                           author_user_id=who["user"], author_api_key_id=who["key"], hospital=hospital,
                           shared=shared)  # fmt: skip
            session.add(row)
            session.flush()
            return {"id": row.id}
        thumb, masks_key, view_key = (
            f"segmentations/liver/{rid}/thumbnail.png",
            f"segmentations/liver/{rid}/{MASKS_OBJECT}",
            f"segmentations/liver/{rid}/{VIEW_OBJECT}",
        )
        store.put_bytes("medseg-results", thumb, b"\x89PNG\r\n\x1a\nfake")
        store.put_bytes("medseg-results", view_key, ct_view())
        square = encode_png(np.pad(np.ones((4, 4), bool), 14))
        store.put_bytes("medseg-results", masks_key, pack_masks({t: square for t in THRESHOLDS}))
        patient = f"P-{rid.hex[:8]}"
        session.add(Segmentation(
            id=rid, organ="liver", model_name="liver", model_version="acc", patient_id=patient, width=32,
            height=32, probability_key="p", mask_keys={f"{t:.1f}": masks_key for t in THRESHOLDS},
            areas_px={"0.5": 4}, thumbnail_key=thumb, view_key=view_key, user_id=who["user"],
            api_key_id=who["key"], hospital=hospital,
        ))  # fmt: skip
        return {"id": str(rid), "patient": patient}


def _make_administered(world, resource: str, maker: str, hospital: str | None, relation: str, rid) -> dict:
    """A row of `hospital` (the maker's) an admin administers; `own` (a user): the maker's own account."""
    if resource == "user" and relation == "own":
        return {"id": world.users[maker].id}
    with world.session() as session:
        if resource == "user":
            row = User(email=f"{rid.hex[:12]}@example.org", password_hash="x", full_name="New",
                       role="doctor", status="pending", hospital=hospital)  # fmt: skip
        elif resource == "api_key":
            return {"id": create_api_key(session, "probe", ["segment"], hospital=hospital)[0].prefix}
        else:
            row = AuditLog(actor="test", action=PROBE, target=str(rid), hospital=hospital)
        session.add(row)
        session.flush()
        return {"id": row.id}


# --- the matrix -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    op: str
    caller: Caller
    relation: str
    edge: str  # http | grpc

    @property
    def id(self) -> str:
        who = self.caller.kind if self.caller.role is not None or self.caller.kind == "key" else "admin_key"
        return f"{self.op}-{who}-{self.relation}-{self.edge}"


def _admitted(op: str, caller: Caller) -> bool:
    """Whether the role/scope gate lets the caller in (that gate is tests/api/test_access.py's); an
    admin-scoped key has every scope."""
    access = OPERATIONS[operation(op)].access
    if caller.role is None:
        return bool(access.scopes) and (
            "admin" in caller.scopes or bool(set(caller.scopes) & set(access.scopes))
        )
    return caller.role in access.roles


def _cells() -> list[Cell]:
    cells = []
    for op, call in CALLS.items():
        for caller in CALLERS:
            if not _admitted(op, caller) or caller.kind in call.skip_kinds:
                continue
            for relation in _cases(caller, call.resource):
                if OPERATIONS[operation(op)].http or op in HTTP_ONLY:  # Watch is gRPC's only
                    cells.append(Cell(op, caller, relation, "http"))
                if caller.role is None and OPERATIONS[operation(op)].grpc:
                    cells.append(Cell(op, caller, relation, "grpc"))
    return cells


CELLS = _cells()


def expected(cell: Cell, row_relations: frozenset[str]) -> str:
    """reached | forbidden | hidden, from the access table's rule (forbidden: a write rule on a row the
    caller sees by the resource's read rule)."""
    rule = rule_of(cell.op)

    def reaches(r: Rows) -> bool:
        allowed = r.relations(cell.caller.kind)
        return "any" in allowed or bool(allowed & row_relations)

    if reaches(rule):
        return "reached"
    return "forbidden" if rule.action != "read" and reaches(READ[rule.resource]) else "hidden"


@pytest.fixture(scope="module")
def people_db(tmp_path_factory):
    """SQLite only: the rules are SQL clauses the PostgreSQL runs of test_tenancy.py exercise too."""
    return sqlite_database(tmp_path_factory, "tenancy-db")


@pytest.fixture(scope="module")
def tenants(world):
    _prepare(world)
    _no_training(world)  # training jobs start a worker that exits at once
    with world.session() as session:
        for name, role, hospital in (("doctor_a2", "doctor", HOSPITAL_A), ("admin_a", "admin", HOSPITAL_A)):
            world.users[name] = accounts.create_user(
                session, email=f"{name}@example.org", password=PASSWORD, full_name=name, role=role,
                status="active", hospital=hospital, actor="test",
            )  # fmt: skip
        for name, scopes in ((KEY, KEY_SCOPES), (ADMIN_KEY, ("admin",))):
            row, raw = create_api_key(session, f"st-anna-{name}", list(scopes), hospital=HOSPITAL_A)
            world.keys[name], world.key_rows[name] = raw, row
    assert world.users["doctor_b"].hospital == HOSPITAL_B
    upload = world.client("doctor").post(
        "/api/v1/datasets", data={"organ": "liver"}, files={"file": ("t.zip", small_dataset_zip(1))}
    )
    assert upload.status_code == 201, upload.text
    version = _version(world)
    world._tenancy_template, world._tenancy_version, world._tenancy_version_id = (
        upload.json()["id"], version.version, version.id,
    )  # fmt: skip
    return world


@pytest.fixture(scope="module")
def channel(tenants):
    yield from grpc_channel(tenants, tenants.app())


def _http(world, cell: Cell, args: dict):
    client = world.client(f"key:{cell.caller.name}" if cell.caller.role is None else cell.caller.name)
    response = (HTTP_ONLY.get(cell.op) or HTTP_CALLS[cell.op])(client, args)
    if response.status_code >= 400:
        return response.status_code, None
    content_type = response.headers["content-type"]
    if content_type.startswith("text/csv"):
        return response.status_code, response.text
    return response.status_code, response.json() if content_type.startswith("application/json") else None


def _grpc(world, channel, cell: Cell, args: dict):
    """The call through tests/api/test_parity.py's gRPC driver (unary and streaming RPCs alike)."""
    outcome = call_grpc(world, channel, Row(operation(cell.op), cell.caller.name, None, {}), args)
    if isinstance(outcome, Failure):
        return {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.PERMISSION_DENIED: 403}.get(
            outcome.status, outcome
        ), None
    return 200, outcome


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.id)
def test_matrix(tenants, channel, cell: Cell):
    call = CALLS[cell.op]
    maker, shared, row_relations = _cases(cell.caller, call.resource)[cell.relation]
    row = _make(tenants, call.resource, maker, shared, cell.relation, dict(call.made))
    want = expected(cell, row_relations)
    args = call.args(tenants, row)
    status, answer = (
        _http(tenants, cell, args) if cell.edge == "http" else _grpc(tenants, channel, cell, args)
    )
    if call.listed is not None:
        assert status == 200, status
        assert call.listed(answer, row) == (want == "reached"), f"{cell.id}: expected {want}"
    else:
        outcome = {403: "forbidden", 404: "hidden"}.get(status, "reached" if status in (200, 201) else status)
        assert outcome == want, f"{cell.id}: expected {want}, got {status}"


def test_every_operation_has_a_rule():
    """Every operation says which rows it reaches (a `Rows` rule) or why no per-row rule applies; every
    `Rows` operation and field rule is walked by the matrix."""
    missing = [name for name, op in OPERATIONS.items() if not (isinstance(op.rows, Rows) or op.rows)]
    assert not missing, f"operations without a row rule in gateway/access.py: {missing}"
    walked = {name for name, op in OPERATIONS.items() if isinstance(op.rows, Rows)}
    walked |= {f"{name}[{field}]" for name, op in OPERATIONS.items() for field, _ in op.fields}
    assert walked == set(CALLS), f"Rows operations without a matrix call: {walked ^ set(CALLS)}"


def test_the_matrix_walks_every_relation_and_both_edges():
    relations = {(c.op, c.relation) for c in CELLS}
    for op, call in CALLS.items():
        owned = {"hospital", "other"} if call.resource in OWNERLESS else {"own", "hospital", "other"}
        assert owned <= {r for o, r in relations if o == op}, op
    grpc_ops = {op for op in CALLS if OPERATIONS[operation(op)].grpc}
    assert {c.op for c in CELLS if c.edge == "grpc"} == grpc_ops
    operations = {operation(op) for op in CALLS}
    print(f"tenancy matrix: {len(operations)} operations ({len(CALLS) - len(operations)} field rules), "
          f"{len(CALLS)} calls, {len(CELLS)} cells ({sum(c.edge == 'http' for c in CELLS)} HTTP, "
          f"{sum(c.edge == 'grpc' for c in CELLS)} gRPC)")  # fmt: skip
