"""What every medseg.v1 servicer shares (the servicers are in gateway/resources/<resource>/grpc.py, the
server in gateway/grpc_server.py).

Each RPC admits the caller by its operation's entry of the access table (gateway/access.py: the same as
HTTP's; over gRPC only API keys, in metadata `authorization: Bearer <key>`) through `Edge`, then calls the
same operation as the HTTP route. Requests with a body are validated by the route's own schema
(`from_message`); answers are the route's schema carried into the message of the same field names
(`to_message`). Errors are mapped by gateway.grpc_server.ErrorMappingInterceptor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, date, datetime

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from medseg.v1 import segmentation_pb2 as seg_pb
from pydantic import BaseModel, TypeAdapter, ValidationError

from common.errors import Forbidden, InvalidInput
from gateway.principal import Access, Principal
from gateway.resources.shared import RowId, validation_message
from gateway.security import authorize
from gateway.service.clinic import Clinic
from gateway.service.dataplane import Upload


def _jsonable(value):
    """A schema's dump as protobuf's JSON mapping reads it (timestamps need a zone: SQLite's have none)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):  # a calendar day (a study's date): YYYY-MM-DD, as HTTP's JSON
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def to_message(model: BaseModel, message: type[Message], nest: tuple[str, type[BaseModel]] | None = None):
    """The schema's fields into the message of the same field names. `nest=(field, Base)`: a detail shape
    (Base's fields plus more) carries Base's fields in a sub-message `field`, as proto3 has no inheritance.
    Scores per label (`_label_scores`) become LabelScores."""
    data = _jsonable(model.model_dump())
    if nest is not None:
        name, base = nest
        data = {name: {k: data.pop(k) for k in base.model_fields}, **data}
    return json_format.ParseDict(_label_scores(data, message.DESCRIPTOR), message())


def _label_scores(data: dict, descriptor) -> dict:
    """`data` for the message `descriptor` with scores per label — over HTTP an object keyed by label,
    {"dice", "iou", "hd95_mm"} or their means {"mean_dice", …} — as the message's `repeated LabelScore` field
    carries them: one LabelScore per label, a mean's `mean_` dropped (as Evaluate answers them). Nested
    messages likewise; `data` is changed in place."""
    for field in descriptor.fields:
        value, kind = data.get(field.name), field.message_type
        if value is None or kind is None or kind.GetOptions().map_entry:
            continue
        if kind is seg_pb.LabelScore.DESCRIPTOR and isinstance(value, dict):
            data[field.name] = [
                {"label": label, **{k.removeprefix("mean_"): v for k, v in scores.items()}}
                for label, scores in value.items()
            ]
        else:  # a sub-message (a timestamp, a Struct's value: not an object of fields, left as it is)
            for item in value if field.is_repeated else [value]:
                if isinstance(item, dict):
                    _label_scores(item, kind)
    return data


def from_message(message: Message, schema: type[BaseModel]):
    """The request validated by the HTTP route's schema: the same limits, the same 400 → INVALID_ARGUMENT."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc), code="invalid_input") from None


def row_id(value: int, what: str) -> int:
    """An id as HTTP's path accepts it (gateway.resources.shared.RowId): 0 or less is a 400, not a 404."""
    try:
        return TypeAdapter(RowId).validate_python(value)
    except ValidationError as exc:
        raise InvalidInput(f"{what}: {exc.errors()[0]['msg']}", code="invalid_input") from None


def optional(message: Message, field: str):
    return getattr(message, field) if message.HasField(field) else None


def uploads(items, kind: str) -> list[Upload]:
    return [Upload(i.filename or f"{kind}-{n}", i.image) for n, i in enumerate(items)]


class Edge:
    """What every RPC does first: a database session, the caller admitted by the operation's Access, and the
    registry's defaults re-read when stale (as the HTTP edge's ClinicDep)."""

    def __init__(self, clinic: Clinic, session_factory: Callable[[], AbstractContextManager]):
        self.clinic = clinic
        self.session_factory = session_factory

    @contextmanager
    def call(self, context: grpc.ServicerContext, access: Access) -> Iterator[tuple[object, Principal]]:
        with self.session_factory() as session:
            if not access.scopes:
                raise Forbidden(f"API keys cannot call this; it needs {access.describe()}", code="forbidden")
            key = authorize(session, dict(context.invocation_metadata()).get("authorization"), access.scopes)
            self.clinic.directory.refresh(session)
            yield session, Principal(api_key=key)

    def admit(self, context: grpc.ServicerContext, access: Access) -> Principal:
        """The caller, admitted as by `call`, for RPCs that need no session afterwards."""
        with self.call(context, access) as (_, who):
            return who


class Servicer:
    """What a resource's servicer holds: the edge (admission, sessions) and the services behind it."""

    def __init__(self, edge: Edge):
        self.edge, self.clinic, self.dataplane = edge, edge.clinic, edge.clinic.dataplane


def model_ref(m) -> seg_pb.ModelRef:
    return seg_pb.ModelRef(name=m.name, version=m.version)
