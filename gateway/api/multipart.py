"""Streaming multipart/form-data: one file part goes straight to a named temporary file, small text
fields are kept. Used where an upload is too big to hold (dataset zips); the route authenticates first,
because its dependencies run before a single body byte is read (the route declares no Form/File params).
Total size is capped by BodyLimitMiddleware (Content-Length refused up front, the stream counted)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from common.errors import InvalidInput, UnsupportedMediaType

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 16


@dataclass
class StreamedForm:
    fields: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None
    filename: str | None = None
    file_size: int = 0

    def cleanup(self) -> None:
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)


async def receive_form(
    request: Request, *, file_field: str, tmp_dir: Path | None, suffix: str
) -> StreamedForm:
    """Parse the body; the part named `file_field` is written to a temp file (caller calls cleanup())."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise UnsupportedMediaType(
            "send multipart/form-data with the file in the field " + repr(file_field),
            code="not_multipart",
            params={"field": file_field},
        )
    form = StreamedForm()
    part: dict = {}
    headers: dict[str, str] = {}
    header_name = bytearray()
    header_value = bytearray()
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)

    def on_part_begin() -> None:
        part.clear()
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[header_name.decode("latin-1").lower()] = header_value.decode("latin-1")
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        part["name"] = name
        if name == file_field and b"filename" in disposition:
            if form.file_path is not None:
                raise InvalidInput(
                    f"send one file in {file_field!r}, not several",
                    code="several_files",
                    params={"field": file_field},
                )
            fd, path = tempfile.mkstemp(suffix=suffix, prefix="medseg-upload-", dir=tmp_dir)
            form.file_path = Path(path)
            form.filename = os.path.basename(disposition[b"filename"].decode("utf-8", "replace"))
            part["file"] = os.fdopen(fd, "wb")
        else:
            if len(form.fields) >= MAX_FIELDS:
                raise InvalidInput(
                    f"too many form fields (at most {MAX_FIELDS})",
                    code="too_many_fields",
                    params={"limit": MAX_FIELDS},
                )
            part["value"] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if "file" in part:
            part["file"].write(data[start:end])
            form.file_size += end - start
        else:
            part["value"].extend(data[start:end])
            if len(part["value"]) > MAX_FIELD_BYTES:
                raise InvalidInput(
                    f"form field {part['name']!r} is longer than {MAX_FIELD_BYTES} bytes",
                    code="invalid_input",
                    params={"field": part["name"], "rule": "too_long", "limit": MAX_FIELD_BYTES},
                )

    def on_part_end() -> None:
        if "file" in part:
            part.pop("file").close()
        elif "value" in part:
            form.fields[part["name"]] = part["value"].decode("utf-8", "replace")

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        # Disk writes are local and chunk-sized; they stay on the event loop, as Starlette's own parser does.
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if "file" in part:
            raise InvalidInput(
                "the request body ended in the middle of the file (incomplete upload)",
                code="incomplete_upload",
            )
    except MultipartParseError as exc:
        _abort(form, part)
        raise InvalidInput(f"malformed multipart body: {exc}", code="incomplete_upload") from exc
    except BaseException:
        _abort(form, part)
        raise
    return form


def _abort(form: StreamedForm, part: dict) -> None:
    if "file" in part:
        part.pop("file").close()
    form.cleanup()
