"""The worker's wire protocol: versioned JSON requests and replies over ZeroMQ (see docs/protocol.md).

A request is a multipart message whose first frame is one UTF-8 JSON object
``{"v": 1, "id": "...", "op": "submit", ...}``; uploads (a raw file's bytes) and downloads (a TIFF's
bytes) travel as further frames, never inside the JSON. Every reply repeats ``v``, ``id`` and ``op``
and carries ``"ok": true`` or ``"ok": false`` with ``{"error": {"code", "message"}}``.

This module is shared by the worker and the client, so it imports nothing heavy: the client runs on
every darktable poll and must start fast.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field as dataclass_field
from typing import Any

from .naming import check_target

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

MAX_HEADER_BYTES = 1 << 20
"""The JSON frame of a request; file lists of thousands of paths fit comfortably."""
MAX_FILES_PER_JOB = 1000
MAX_BRACKET = 16
MAX_ID_CHARS = 64

OPS = ("ping", "health", "submit", "upload", "status", "cancel", "fetch", "release", "jobs", "shutdown")
FILE_STATES = ("queued", "running", "done", "failed", "cancelled")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL_STATES = frozenset({"done", "failed", "cancelled"})

OPTION_FIELDS = ("brightness", "amplification", "variant", "out_dir", "overwrite", "compression", "format", "target",
                 "targets")


class ProtocolError(Exception):
    """A request the worker refuses; ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


# Error codes (also listed in docs/protocol.md).
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
BAD_VERSION = "bad_version"
UNKNOWN_OP = "unknown_op"
TOO_LARGE = "too_large"
UNKNOWN_JOB = "unknown_job"
BAD_OPTION = "bad_option"
NOT_ALLOWED = "not_allowed"
NOT_READY = "not_ready"
BUSY = "busy"
SHUTTING_DOWN = "shutting_down"
INTERNAL = "internal"


@dataclass
class Reply:
    """A reply as both sides hold it: frame 0's JSON object and the binary frames after it."""

    body: dict[str, Any]
    blobs: list[bytes] = dataclass_field(default_factory=list)


def new_id() -> str:
    return uuid.uuid4().hex


def dumps(obj: Mapping[str, Any]) -> bytes:
    """One JSON frame, UTF-8. A file name that is not UTF-8 (its undecodable bytes are surrogate escapes,
    as ``os.fsdecode`` gives them) makes the whole frame ASCII with ``\\udcXX`` escapes instead:
    plain JSON, which decodes back to the very same name."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def make_request(op: str, request_id: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id or new_id(), "op": op, **fields}


def ok_reply(request: Mapping[str, Any] | None, **fields: Any) -> dict[str, Any]:
    request = request or {}
    return {"v": PROTOCOL_VERSION, "id": request.get("id"), "op": request.get("op"), "ok": True, **fields}


def error_reply(request: Mapping[str, Any] | None, code: str, message: str) -> dict[str, Any]:
    request = request or {}
    rid = request.get("id") if isinstance(request.get("id"), str) else None
    op = request.get("op") if isinstance(request.get("op"), str) else None
    return {"v": PROTOCOL_VERSION, "id": rid, "op": op, "ok": False, "error": {"code": code, "message": message}}


def parse_request(frame: bytes) -> dict[str, Any]:
    """Decode and check the envelope of a request frame; raises :class:`ProtocolError` naming the reason."""
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(TOO_LARGE, f"request frame of {len(frame)} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    try:
        msg = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(BAD_JSON, f"request is not UTF-8 JSON ({exc.__class__.__name__}: {exc})") from None
    except RecursionError:
        raise ProtocolError(BAD_JSON, "request JSON is nested too deeply") from None
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_REQUEST, f"request must be a JSON object, not {type(msg).__name__}")
    version = msg.get("v")
    if version is None:
        raise ProtocolError(BAD_VERSION, f"request has no protocol version 'v' (this worker speaks {PROTOCOL_VERSION})")
    if not _is_int(version) or version not in SUPPORTED_VERSIONS:
        raise ProtocolError(BAD_VERSION, f"protocol version {version!r} is not supported (this worker speaks "
                                         f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    rid = msg.get("id")
    if rid is not None and (not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID_CHARS):
        raise ProtocolError(BAD_REQUEST, f"'id' must be a string of 1-{MAX_ID_CHARS} characters")
    op = msg.get("op")
    if not isinstance(op, str):
        raise ProtocolError(BAD_REQUEST, "request has no 'op' string")
    if op not in OPS:
        raise ProtocolError(UNKNOWN_OP, f"unknown op {op[:40]!r} (known: {', '.join(OPS)})")
    return msg


# ---- field checks shared by the worker's handlers -------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite number that fits a float (JSON integers have no bound: 400 digits are not one)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def field(msg: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True,
          default: Any = None) -> Any:
    """One typed field of a request; a missing or mistyped field is a ``bad_request`` naming it."""
    if name not in msg or msg[name] is None:
        if required:
            raise ProtocolError(BAD_REQUEST, f"'{msg.get('op')}' needs the field '{name}'")
        return default
    value = msg[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(BAD_REQUEST, f"'{name}' must be {_kind_names(kinds)}, not a boolean")
    if not isinstance(value, kinds):
        raise ProtocolError(BAD_REQUEST, f"'{name}' must be {_kind_names(kinds)}, not {type(value).__name__}")
    return value


def _kind_names(kinds: Iterable[type]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def job_field(msg: Mapping[str, Any]) -> str:
    job = field(msg, "job", str)
    if not 0 < len(job) <= MAX_ID_CHARS:
        raise ProtocolError(BAD_REQUEST, "'job' must be a job id as returned by submit")
    return job


def string_list(msg: Mapping[str, Any], name: str, *, limit: int) -> list[str]:
    values = field(msg, name, list)
    if not values:
        raise ProtocolError(BAD_REQUEST, f"'{name}' is empty")
    if len(values) > limit:
        raise ProtocolError(TOO_LARGE, f"'{name}' has {len(values)} entries; the limit is {limit}")
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v or "\0" in v:
            raise ProtocolError(BAD_REQUEST, f"'{name}[{i}]' must be a non-empty string")
    return values


def check_options(raw: Any) -> dict[str, Any]:
    """Type-check the ``options`` object; value ranges are checked by ``EnhanceOptions`` on the worker."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProtocolError(BAD_REQUEST, "'options' must be an object")
    unknown = sorted(set(raw) - set(OPTION_FIELDS))
    if unknown:
        raise ProtocolError(BAD_OPTION, f"unknown option(s) {', '.join(unknown)} (known: {', '.join(OPTION_FIELDS)})")
    out: dict[str, Any] = {}
    if raw.get("brightness") is not None:
        values = raw["brightness"]
        values = [values] if is_number(values) else values
        if not isinstance(values, list) or not values or not all(is_number(v) for v in values):
            raise ProtocolError(BAD_OPTION, "'brightness' must be a number or a non-empty list of numbers")
        if len(values) > MAX_BRACKET:
            raise ProtocolError(BAD_OPTION, f"a bracket has at most {MAX_BRACKET} values")
        out["brightness"] = [float(v) for v in values]
    if raw.get("amplification") is not None:
        if not is_number(raw["amplification"]):
            raise ProtocolError(BAD_OPTION, "'amplification' must be a number")
        out["amplification"] = float(raw["amplification"])
    for name, kind in (("variant", str), ("out_dir", str), ("compression", str), ("format", str), ("overwrite", bool)):
        if raw.get(name) is not None:
            if not isinstance(raw[name], kind):
                raise ProtocolError(BAD_OPTION, f"'{name}' must be {_kind_names([kind])}")
            out[name] = raw[name]
    targets = _targets(raw)
    if targets is not None:
        out["targets"] = targets
    return out


def _targets(raw: Mapping[str, Any]) -> list[str] | None:
    """``target`` (one name) or ``targets`` (one per brightness value) as a list of checked file names."""
    target, targets = raw.get("target"), raw.get("targets")
    if target is not None and targets is not None:
        raise ProtocolError(BAD_OPTION, "give 'target' or 'targets', not both")
    if target is not None:
        if not isinstance(target, str):
            raise ProtocolError(BAD_OPTION, "'target' must be a string")
        targets = [target]
    elif targets is None:
        return None
    elif not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise ProtocolError(BAD_OPTION, "'targets' must be a non-empty list of file names")
    if len(targets) > MAX_BRACKET:
        raise ProtocolError(BAD_OPTION, f"at most {MAX_BRACKET} target names")
    try:
        return [check_target(t, raw.get("format") or "tiff") for t in targets]
    except ValueError as exc:
        raise ProtocolError(BAD_OPTION, str(exc)) from None


def options_to_wire(options: Any) -> dict[str, Any]:
    """An ``EnhanceOptions`` (or anything with its attributes) as the ``options`` object of a submit."""
    out_dir = getattr(options, "out_dir", None)
    wire = {
        "brightness": [float(m) for m in options.brightness],
        "variant": options.variant,
        "overwrite": bool(options.overwrite),
        "compression": options.compression,
        "format": getattr(options, "format", "tiff"),
        "out_dir": str(out_dir) if out_dir is not None else None,
    }
    if options.amplification is not None:
        wire["amplification"] = float(options.amplification)
    return wire


# ---- the tab-separated status format the darktable script parses -----------------------------------------------


def tsv_escape(text: Any) -> str:
    """Backslash, tab and newline escaped so one field stays one field on one line."""
    s = "" if text is None else str(text)
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def tsv_unescape(text: str) -> str:
    out, i = [], 0
    codes = {"\\": "\\", "t": "\t", "n": "\n"}
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in codes:
            out.append(codes[text[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def tsv_line(*fields: Any) -> str:
    return "\t".join(tsv_escape(f) for f in fields)


def file_tsv(entry: Mapping[str, Any]) -> str:
    return tsv_line("file", entry.get("state"), entry.get("source"), "|".join(entry.get("outputs") or ()),
                    entry.get("error") or "")


def status_tsv(status: Mapping[str, Any]) -> str:
    """``job<TAB>id<TAB>state<TAB>finished<TAB>total`` then one ``file`` line per file (docs/protocol.md)."""
    lines = [tsv_line("job", status["job"], status["state"], status["finished"], status["total"])]
    lines += [file_tsv(entry) for entry in status.get("files", ())]
    return "\n".join(lines)
