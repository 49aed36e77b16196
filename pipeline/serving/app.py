"""`make serve`: the model behind a small HTTP app of ours (MLflow's scoring protocol: POST
/invocations with JSON in the `dataframe_split`, `dataframe_records`, `inputs` or `instances`
form, or CSV; GET /ping and /health). It refuses what it cannot take before reading it: a body
over `serve.max_request_mb` gets 413 from its Content-Length (or as soon as a streamed body passes
the limit), more rows than `serve.max_rows` 413, JSON nested too deeply 400; every error is one
short JSON message, never a stack trace or the request's data."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)
MAX_NESTING = 64  # a table is a few levels deep; deeper JSON is refused before it is parsed


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_rows: int


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _nesting(body: bytes) -> int:
    """How deeply the JSON's arrays and objects nest (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_NESTING:
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _frame_from_json(body: bytes) -> pd.DataFrame:
    if _nesting(body) > MAX_NESTING:
        raise Refused(400, "BAD_REQUEST", f"the JSON body nests deeper than {MAX_NESTING} levels")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise Refused(400, "BAD_REQUEST", "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise Refused(
            400,
            "BAD_REQUEST",
            'send a JSON object such as {"dataframe_split": {"columns": [...], "data": [[...]]}}',
        )
    try:
        if "dataframe_split" in payload:
            split = payload["dataframe_split"]
            return pd.DataFrame(split["data"], columns=split["columns"])
        if "dataframe_records" in payload:
            return pd.DataFrame.from_records(payload["dataframe_records"])
        for key in ("instances", "inputs"):
            if key in payload:
                value = payload[key]
                return pd.DataFrame(value) if isinstance(value, dict) else pd.DataFrame.from_records(value)
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(
            400, "BAD_REQUEST", f"the rows could not be read: {str(exc).splitlines()[0][:200]}"
        ) from None
    raise Refused(
        400, "BAD_REQUEST", "the JSON holds none of dataframe_split, dataframe_records, inputs, instances"
    )


def _frame_from_csv(body: bytes, columns: dict[str, str]) -> pd.DataFrame:
    from pipeline.data.inspection import CATEGORICAL

    text = {name: "object" for name, kind in columns.items() if kind == CATEGORICAL}
    try:
        return pd.read_csv(io.BytesIO(body), dtype=text or None)
    except Exception as exc:  # noqa: BLE001 - any parser failure is the client's
        raise Refused(
            400, "BAD_REQUEST", f"the CSV body could not be read: {str(exc).splitlines()[0][:200]}"
        ) from None


def read_rows(body: bytes, content_type: str, columns: dict[str, str], limits: Limits) -> pd.DataFrame:
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("application/json", ""):
        frame = _frame_from_json(body)
    elif kind in ("text/csv", "application/csv"):
        frame = _frame_from_csv(body, columns)
    else:
        raise Refused(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"content type {kind!r} is not served; send application/json or text/csv",
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


async def _body(request: Any, limits: Limits) -> bytes:
    """The request body, refused from its Content-Length, or as soon as a streamed body passes
    the limit, without reading the rest."""
    too_large = Refused(
        413, "REQUEST_TOO_LARGE",
        f"the body is larger than serve.max_request_mb={limits.max_bytes / 2**20:g}; send fewer rows per request",
    )  # fmt: skip
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(model: Any, limits: Limits) -> Any:
    """The ASGI app serving `model` (a loaded pyfunc)."""
    import mlflow
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.routing import Route

    from pipeline.serving.target import input_columns

    columns = input_columns(model)

    async def invocations(request: Any) -> Any:
        try:
            body = await _body(request, limits)
            frame = read_rows(body, request.headers.get("content-type", ""), columns, limits)
            # the model runs in a thread: /ping answers while a large batch is scored
            out = await run_in_threadpool(model.predict, frame)
        except Refused as refused:
            return _error(refused)
        except mlflow.exceptions.MlflowException as exc:
            return _error(Refused(400, "BAD_REQUEST", str(exc.message).splitlines()[0][:500]))
        except Exception:  # noqa: BLE001 - logged here; the client gets no stack trace
            log.exception("the model failed on a request")
            return _error(
                Refused(500, "INTERNAL_ERROR", "the model failed on this request; see the server's log")
            )
        try:
            return _json_response(200, {"predictions": json.loads(out.to_json(orient="records"))})
        except ValueError:
            return _error(Refused(500, "INTERNAL_ERROR", "the model produced values that are not finite"))

    async def ping(request: Any) -> Any:
        return _json_response(200, {"status": "ok"})

    return Starlette(
        routes=[
            Route("/invocations", invocations, methods=["POST"]),
            Route("/ping", ping, methods=["GET"]),
            Route("/health", ping, methods=["GET"]),
        ]
    )
