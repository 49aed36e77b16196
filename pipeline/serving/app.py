"""`make serve`: the model behind a small HTTP app of ours (MLflow's scoring protocol: POST
/invocations with JSON in the `dataframe_split`, `dataframe_records`, `inputs` or `instances`
form, or CSV in UTF-8 or the charset its Content-Type names; GET /ping and /health). It refuses
what it cannot take before reading it: a body over `serve.max_request_mb` gets 413 from its
Content-Length (or as soon as a streamed body passes the limit), more rows than `serve.max_rows`
413, JSON nested too deeply 400, rows the model cannot score (a missing or repeated column, text
or an infinite number in a numeric column) 400 naming the column and rows; every answer is strict
JSON, and every error one short message, never a stack trace or the request's data. Parsing and
scoring run in threads, so /ping answers while a large request is handled."""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
MAX_NESTING = 64  # a table is a few levels deep; deeper JSON is refused before it is parsed
FORMS = (
    'send {"dataframe_split": {"columns": [...], "data": [[...], ...]}}, '
    '{"dataframe_records": [{...}, ...]}, {"inputs": ...} or {"instances": ...}'
)
# a JSON string, escapes included, matched without backtracking (the "unrolled loop")
JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
OPEN, CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
CHUNK = 1 << 20
LINGER_SECONDS = 10  # how long a refused body that is still arriving is read and dropped


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_rows: int


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _bad(message: str) -> Refused:
    return Refused(400, "BAD_REQUEST", message)


def _nesting(body: bytes) -> int:
    """How deeply the JSON's arrays and objects nest (brackets inside strings do not count), in
    C and numpy rather than a Python loop: a body of serve.max_request_mb takes a fraction of a
    second, not the seconds a byte-by-byte loop would hold the server for."""
    codes = np.frombuffer(JSON_STRING.sub(b'""', body), np.uint8)
    steps = np.isin(codes, OPEN).astype(np.int8) - np.isin(codes, CLOSE).astype(np.int8)
    steps = steps[steps != 0]
    depth = deepest = 0
    for start in range(0, len(steps), CHUNK):  # int32 running depths, a chunk at a time
        running = depth + np.cumsum(steps[start : start + CHUNK], dtype=np.int32)
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
    return deepest


def _split_frame(split: Any) -> pd.DataFrame:
    if not (
        isinstance(split, dict)
        and isinstance(split.get("columns"), list)
        and isinstance(split.get("data"), list)
    ):
        raise _bad('dataframe_split must be an object with "columns" (a list) and "data" (a list of rows)')
    columns, rows = split["columns"], split["data"]
    for number, row in enumerate(rows, 1):
        if not isinstance(row, list) or len(row) != len(columns):
            raise _bad(
                f"dataframe_split row {number} is not a list of {len(columns)} values (one per column)"
            )
    return pd.DataFrame(rows, columns=[str(c) for c in columns])


def _records_frame(records: Any, key: str) -> pd.DataFrame:
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise _bad(f"{key} must be a list of objects, one per row")
    return pd.DataFrame.from_records(records) if records else pd.DataFrame()


def _columns_frame(columns: dict, key: str) -> pd.DataFrame:
    """`{"x1": [1, 2], "color": ["red", null]}`, or one row as `{"x1": 1, "color": "red"}`."""
    values = list(columns.values())
    if values and all(not isinstance(v, list | dict) for v in values):
        return pd.DataFrame([columns])
    if not all(isinstance(v, list) for v in values) or len({len(v) for v in values}) > 1:
        raise _bad(f"{key} as an object must map each column to a list of values, all of one length")
    return pd.DataFrame(columns)


def _frame_from_payload(payload: Any) -> pd.DataFrame:
    if not isinstance(payload, dict):
        raise _bad(f"the body is not a JSON object; {FORMS}")
    if "dataframe_split" in payload:
        return _split_frame(payload["dataframe_split"])
    if "dataframe_records" in payload:
        return _records_frame(payload["dataframe_records"], "dataframe_records")
    for key in ("instances", "inputs"):
        if key in payload:
            value = payload[key]
            return _columns_frame(value, key) if isinstance(value, dict) else _records_frame(value, key)
    raise _bad(f"the JSON holds none of dataframe_split, dataframe_records, inputs, instances; {FORMS}")


def _frame_from_json(body: bytes) -> pd.DataFrame:
    if not body.strip():
        raise _bad(f"the body is empty; {FORMS}")
    if _nesting(body) > MAX_NESTING:
        raise _bad(f"the JSON body nests deeper than {MAX_NESTING} levels; {FORMS}")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise _bad("the body is not valid JSON") from None
    try:
        return _frame_from_payload(payload)
    except Refused:
        raise
    except (TypeError, ValueError):  # pandas' own words could quote the data: not sent back
        raise _bad(f"the rows could not be read as a table; {FORMS}") from None


def _charset(content_type: str, body: bytes) -> str:
    """The body's charset: the Content-Type's, else a byte order mark's, else UTF-8."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8-sig"


def _csv_text(body: bytes, content_type: str) -> str:
    charset = _charset(content_type, body)
    try:
        text = body.decode(charset)
    except LookupError:
        raise _bad(f"charset {charset[:40]!r} is unknown; send UTF-8 text") from None
    except UnicodeDecodeError:
        raise _bad(
            f"the CSV body is not {charset.removesuffix('-sig')} text; send UTF-8 text "
            "or name its charset (Content-Type: text/csv; charset=...)"
        ) from None
    if "\x00" in text:
        raise _bad("the CSV body holds NUL bytes, as binary data does; send the rows as CSV text")
    return text


def _frame_from_csv(body: bytes, content_type: str, columns: dict[str, str]) -> pd.DataFrame:
    from pipeline.data.inspection import CATEGORICAL
    from pipeline.data.read import repeated_names

    text = _csv_text(body, content_type)
    try:
        header = next(csv.reader(io.StringIO(text)), [])
    except csv.Error:
        raise _bad("the CSV header could not be read; send a header line of column names") from None
    repeated = repeated_names(header)
    if repeated:  # pandas would rename the second x1 to x1.1 and score the first
        raise _bad(f"the CSV header repeats column name(s) {', '.join(map(repr, repeated[:10]))}")
    kinds = {name: "object" for name, kind in columns.items() if kind == CATEGORICAL}
    try:
        return pd.read_csv(io.StringIO(text), dtype=kinds or None)
    except pd.errors.EmptyDataError:
        raise _bad("the CSV body is empty; send a header line and rows") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is the client's
        raise _bad(f"the CSV body could not be read: {str(exc).splitlines()[0][:200]}") from None


def read_rows(body: bytes, content_type: str, columns: dict[str, str], limits: Limits) -> pd.DataFrame:
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("application/json", ""):
        frame = _frame_from_json(body)
    elif kind in ("text/csv", "application/csv"):
        frame = _frame_from_csv(body, content_type, columns)
    else:
        raise Refused(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"content type {kind[:60]!r} is not served; send application/json or text/csv",
        )
    if len(frame) > limits.max_rows:
        raise Refused(
            413,
            "REQUEST_TOO_LARGE",
            f"{len(frame)} rows is more than serve.max_rows={limits.max_rows}; send fewer rows per request",
        )
    return frame


def _json_response(status: int, content: dict[str, Any]) -> Any:
    from starlette.responses import Response

    return Response(json.dumps(content, allow_nan=False), status_code=status, media_type="application/json")


def _error(refused: Refused) -> Any:
    return _json_response(refused.status, {"error_code": refused.code, "message": refused.message})


def _mlflow_message(message: str) -> str:
    """MLflow's schema errors start by quoting the whole input frame: only their reason is sent."""
    reason = message.rsplit("Error: ", 1)[-1] if message.startswith("Failed to enforce schema") else message
    first = reason.strip().splitlines()[0] if reason.strip() else "the rows do not fit the model's input"
    return first[:300]


def _closes_after_answer(request: Any) -> bool:
    """Whether the server closes the connection once it has answered: the client asked for it
    (urllib's `Connection: close`, HTTP/1.0) and did not wait for `100 Continue` before sending."""
    connection = request.headers.get("connection", "").lower()
    waits = request.headers.get("expect", "").lower() == "100-continue"
    return not waits and ("close" in connection or request.scope.get("http_version") == "1.0")


async def _linger(request: Any) -> None:
    """Read and drop what a refused client is still sending, for at most LINGER_SECONDS, before
    answering: closing on a client that is still sending resets the connection, and the client
    never reads its 413 (a keep-alive connection is drained by the server after the answer)."""
    import anyio
    from starlette.requests import ClientDisconnect

    if not _closes_after_answer(request):
        return
    with anyio.move_on_after(LINGER_SECONDS):
        try:
            async for _ in request.stream():
                pass
        except ClientDisconnect:
            pass


async def _body(request: Any, limits: Limits) -> bytes:
    """The request body, refused from its Content-Length, or as soon as a streamed body passes
    the limit, without keeping the rest."""
    too_large = Refused(
        413, "REQUEST_TOO_LARGE",
        f"the body is larger than serve.max_request_mb={limits.max_bytes / 2**20:g}; send fewer rows per request",
    )  # fmt: skip
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_bytes:
        await _linger(request)
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_bytes:
            await _linger(request)
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _score(model: Any, frame: pd.DataFrame, columns: dict[str, str]) -> bytes:
    """The predictions as strict JSON (missing values as null, never NaN or Infinity)."""
    from pipeline.serving.packaging import check_input

    # checked here first: MLflow's own schema check would quote the rows in its error
    out = model.predict(check_input(frame, columns))
    predictions = json.loads(out.to_json(orient="records"))
    return json.dumps({"predictions": predictions}, allow_nan=False).encode()


def build_app(model: Any, limits: Limits) -> Any:
    """The ASGI app serving `model` (a loaded pyfunc)."""
    import mlflow
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import Response
    from starlette.routing import Route

    from pipeline.serving.target import input_columns

    columns = input_columns(model)

    async def invocations(request: Any) -> Any:
        try:
            body = await _body(request, limits)
            # parsing and scoring run in threads: /ping answers while a large body is handled
            content_type = request.headers.get("content-type", "")
            frame = await run_in_threadpool(read_rows, body, content_type, columns, limits)
            answer = await run_in_threadpool(_score, model, frame, columns)
        except Refused as refused:
            return _error(refused)
        except mlflow.exceptions.MlflowException as exc:
            return _error(_bad(_mlflow_message(str(exc.message))))
        except ClientDisconnect:
            return _error(_bad("the client closed the connection before the body was read"))
        except Exception:  # noqa: BLE001 - logged here; the client gets no stack trace
            log.exception("the model failed on a request")
            return _error(
                Refused(500, "INTERNAL_ERROR", "the model failed on this request; see the server's log")
            )
        return Response(answer, media_type="application/json")

    async def ping(request: Any) -> Any:
        return _json_response(200, {"status": "ok"})

    async def http_error(request: Any, exc: Any) -> Any:  # 404, 405: JSON like every answer
        answer = _error(Refused(exc.status_code, "BAD_REQUEST", str(exc.detail)[:200]))
        answer.headers.update(exc.headers or {})  # a 405's Allow
        return answer

    async def server_error(request: Any, exc: Exception) -> Any:
        log.error("the server failed on a request", exc_info=exc)
        return _error(Refused(500, "INTERNAL_ERROR", "the server failed on this request; see its log"))

    return Starlette(
        routes=[
            Route("/invocations", invocations, methods=["POST"]),
            Route("/ping", ping, methods=["GET"]),
            Route("/health", ping, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
