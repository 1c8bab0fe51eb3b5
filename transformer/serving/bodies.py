"""Reading request bodies as the clients send them: JSON, form fields (url-encoded or multipart) or query-string
parameters.

Every text is checked to be valid UTF-8: a body, form field or parameter with bytes that are not UTF-8, and a
JSON string with a lone surrogate escape ("\\ud800"), are refused with a ``RequestError`` naming the field.
(Bytes that are not UTF-8 are read with ``surrogateescape``, which turns them into exactly such surrogates, so
one check per field finds both.)
"""

from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import unquote_to_bytes


class RequestError(Exception):
    """A request the service refuses; answered as ``{"error": message}`` with ``status`` (and ``headers``)."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> RequestError:
    return RequestError(400, message)


def utf8_text(value: Any, field: str) -> str:
    """``value`` if it is a string of valid UTF-8.

    Raises:
        RequestError: 400 naming ``field``: not a string, or not valid UTF-8.
    """
    if not isinstance(value, str):
        raise bad_request(f"Invalid request: {field} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"Invalid request: {field} is not valid UTF-8") from None
    return value


def read_json(body: bytes) -> Any:
    """The JSON value of a body (strings may hold surrogates for bytes that are not UTF-8: see ``utf8_text``).

    Raises:
        RequestError: 400, the body is empty or not JSON.
    """
    if not body.strip():
        raise bad_request("Invalid request: the body is empty; send a JSON object")
    try:
        return json.loads(body.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}"
        raise bad_request(f"Invalid request: the body is not valid JSON ({err.msg} at {where})") from None


def read_form(raw: bytes) -> dict[str, str]:
    """Fields of an ``application/x-www-form-urlencoded`` body or a query string; the first of repeated names.

    Raises:
        RequestError: 400, a name or a value is not valid UTF-8 (the field is named).
    """
    fields: dict[str, str] = {}
    for pair in raw.split(b"&"):
        if not pair:
            continue
        name_raw, _, value_raw = pair.partition(b"=")
        name = unquote_to_bytes(name_raw.replace(b"+", b" ")).decode("utf-8", errors="surrogateescape")
        value = unquote_to_bytes(value_raw.replace(b"+", b" ")).decode("utf-8", errors="surrogateescape")
        utf8_text(name, "a form field name")
        fields.setdefault(name, utf8_text(value, name))
    return fields


def is_json(content_type: str) -> bool:
    """Whether a Content-Type header says JSON (``application/json``, ``application/*+json``), as Flask decides."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def read_fields(body: bytes, content_type: str, query_string: bytes) -> dict[str, Any]:
    """The fields of a LibreTranslate-style request: a JSON object when the Content-Type says JSON, else the
    query-string parameters and the form-encoded body (the body's value wins), as LibreTranslate reads
    ``request.values``.

    Raises:
        RequestError: 400, bad JSON, a JSON body that is not an object, a multipart body, or text not UTF-8.
    """
    if is_json(content_type):
        payload = read_json(body)
        if not isinstance(payload, dict):
            raise bad_request(f"Invalid request: the JSON body must be an object, got {type(payload).__name__}")
        return payload
    fields = read_form(query_string)
    if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
        fields.update(read_multipart(body, content_type))
    elif body.strip():
        fields.update(read_form(body.strip()))
    return fields


def read_multipart(body: bytes, content_type: str) -> dict[str, str]:
    """The text fields of a ``multipart/form-data`` body (``curl -F q=...``); files are not read.

    Raises:
        RequestError: 400, the body is not multipart, or a field is not valid UTF-8.
    """
    header = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise bad_request("Invalid request: a multipart/form-data body without parts (or without a boundary)")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or part.get_filename() is not None:
            continue
        value = (part.get_payload(decode=True) or b"").decode("utf-8", errors="surrogateescape")
        fields.setdefault(name, utf8_text(value, name))
    return fields
