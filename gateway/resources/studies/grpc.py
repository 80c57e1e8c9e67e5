"""Studies over gRPC: medseg.v1.Studies, as /api/v1/studies (files in chunks both ways)."""

from __future__ import annotations

import time

from medseg.v1 import studies_pb2 as pb
from medseg.v1 import studies_pb2_grpc as pb_grpc
from pydantic import ValidationError

from common.errors import InvalidInput, PayloadTooLarge
from gateway.access import ACCESS
from gateway.resources.grpc_edge import Servicer, from_message, optional, to_message
from gateway.resources.shared import validation_message
from gateway.resources.studies import service
from gateway.resources.studies.schemas import StudyChoiceRequest, StudyFromPacs
from gateway.service.studies import Upload

CHUNK_BYTES = 1024 * 1024
WATCH_POLL_S = 0.5
FINISHED = ("done", "failed")


def _study(out) -> pb.Study:
    return to_message(out, pb.Study)


def _chunks(blob: bytes, content_type: str, threshold: float = 0.0):
    for start in range(0, max(len(blob), 1), CHUNK_BYTES):
        first = start == 0
        yield pb.FileChunk(
            data=blob[start : start + CHUNK_BYTES],
            content_type=content_type if first else "",
            threshold=threshold if first else 0.0,
        )


class Studies(Servicer, pb_grpc.StudiesServicer):
    """medseg.v1.Studies."""

    def Submit(self, request_iterator, context):
        with self.edge.call(context, ACCESS["studies.submit"]) as (session, who):
            limit = self.clinic.settings.study_max_bytes
            first, files, total = None, [], 0
            name, fresh = "file-0", True
            for chunk in request_iterator:
                first = first or chunk
                total += len(chunk.data)
                if total > limit:
                    raise PayloadTooLarge(
                        f"the study's files are larger than the limit of {limit} bytes",
                        code="study_too_large",
                    )
                # a new name starts a new file, a message without one continues the file before it; a message
                # without data (e.g. a first one naming only the organ) adds no file
                if chunk.filename and chunk.filename != name:
                    name, fresh = chunk.filename, True
                if chunk.data:
                    if fresh:
                        files.append((name, bytearray()))
                        fresh = False
                    files[-1][1].extend(chunk.data)
            if first is None:
                raise InvalidInput("no chunks: send the organ and the study's files", code="no_files")
            if first.HasField("pacs"):
                if total:
                    raise InvalidInput("send the files or a PACS series, not both", code="invalid_input")
                return _study(service.submit_from_pacs(self.clinic, session, who, _from_pacs(first)))
            uploads = [Upload(n, bytes(data)) for n, data in files]
            out = service.submit(
                self.clinic,
                session,
                who,
                first.organ,
                uploads,
                optional(first, "patient_id") or None,
                optional(first, "study_date") or None,
            )
            return _study(out)

    def Get(self, request, context):
        with self.edge.call(context, ACCESS["studies.show"]) as (session, who):
            return _study(service.show(self.clinic, session, who, request.id))

    def List(self, request, context):
        with self.edge.call(context, ACCESS["studies.list"]) as (session, who):
            out = service.list_studies(
                self.clinic, session, who, optional(request, "patient_id"), optional(request, "organ"),
                optional(request, "limit"),
            )  # fmt: skip
            return pb.StudyList(studies=[_study(s) for s in out.studies])

    def Watch(self, request, context):
        who = self.edge.admit(context, ACCESS["studies.watch"])
        last = None
        while context.is_active():
            with self.edge.session_factory() as session:
                out = service.show(self.clinic, session, who, request.id)
            state = (out.status, out.progress)
            if state != last:
                last = state
                yield _study(out)
            if out.status in FINISHED:
                return
            time.sleep(WATCH_POLL_S)

    def GetMask(self, request, context):
        with self.edge.call(context, ACCESS["studies.mask"]) as (session, who):
            used, blob = service.mask(self.clinic, session, who, request.id, optional(request, "threshold"))
        yield from _chunks(blob, "application/gzip", used)

    def GetSeg(self, request, context):
        with self.edge.call(context, ACCESS["studies.seg"]) as (session, who):
            used, blob = service.seg(self.clinic, session, who, request.id, optional(request, "threshold"))
        yield from _chunks(blob, "application/dicom", used)

    def GetImage(self, request, context):
        with self.edge.call(context, ACCESS["studies.image"]) as (session, who):
            blob = service.image(self.clinic, session, who, request.id)
        yield from _chunks(blob, "application/gzip")

    def Cancel(self, request, context):
        with self.edge.call(context, ACCESS["studies.cancel"]) as (session, who):
            return _study(service.cancel(self.clinic, session, who, request.id))

    def ChooseThreshold(self, request, context):
        with self.edge.call(context, ACCESS["studies.choose_threshold"]) as (session, who):
            choice = from_message(request, StudyChoiceRequest)
            out = service.choose_threshold(
                self.clinic, session, who, request.id, choice.threshold, choice.note
            )
            return _study(out)


def _from_pacs(first: pb.StudyUploadChunk) -> StudyFromPacs:
    """The first chunk naming a PACS series, checked by HTTP's JSON schema (a study date is refused there)."""
    data = {
        "organ": first.organ,
        "pacs": {"study_uid": first.pacs.study_uid, "series_uid": first.pacs.series_uid},
        "store_result": first.store_result,
    }
    for field in ("patient_id", "study_date"):
        if first.HasField(field):
            data[field] = getattr(first, field)
    try:
        return StudyFromPacs.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc), code="invalid_input") from None
