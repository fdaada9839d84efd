"""Exception handlers that turn every failure into OpenAI's `{"error": {message, type, param, code}}`.

`DukatError`s keep their class's status/type/code; litestar's own 404/405/413/validation/bad-JSON
errors get the same body; anything else is a 500 with a generic message, logged once with its
traceback (litestar logs nothing itself unless `log_exceptions` says so). Expected failures are no
bugs: a 4xx is logged at DEBUG, an expected 5xx at WARNING without a traceback (`log_failure`).
"""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.types import ExceptionHandlersMap
from litestar.utils.scope.state import ScopeState

from gateway.auth import is_admin, without_paths
from gateway.log_throttle import WarningThrottle
from shared.errors import (
    DukatError,
    ErrorBody,
    ErrorDetail,
    InternalError,
    InvalidRequestError,
    error_for_status,
)

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()

_INTERNAL_MESSAGE = "The server had an error while processing your request; the server log has the details."

# msgspec messages that name a field inside the object they are about.
_FIELD_IN_MESSAGE = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<field>[^`]+)`")
# msgspec's "<message> - at `$.a.b[0]`"; no path for the root object.
_MSGSPEC_PATH = re.compile(r"^(?P<message>.*?) - at `\$(?P<path>[^`]*)`$", re.DOTALL)


def error_response(
    status: int, detail: ErrorDetail, headers: dict[str, str] | None = None
) -> Response[bytes]:
    return Response(
        content=_encoder.encode(ErrorBody(error=detail)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _field_error(path: str, message: str) -> InvalidRequestError:
    """A 400 for a bad field at `path` (dotted, "" for the whole body), naming the field as `param`."""
    path = path.lstrip(".")
    if field := _FIELD_IN_MESSAGE.match(message):
        path = f"{path}.{field['field']}" if path else field["field"]
    if not path:
        return InvalidRequestError(f"request body: {message}")
    return InvalidRequestError(f"{path}: {message}", param=path)


def request_validation_error(exc: msgspec.ValidationError) -> InvalidRequestError:
    """For routes that decode a body themselves: msgspec's error as a 400 naming the field."""
    found = _MSGSPEC_PATH.match(str(exc))
    if found is None:
        return _field_error("", str(exc))
    return _field_error(found["path"], found["message"])


def _validation_error(exc: ValidationException) -> InvalidRequestError:
    """litestar's ValidationException as one 400; its `extra` lists {message, key, source}."""
    items = exc.extra if isinstance(exc.extra, list) else []
    errors: list[InvalidRequestError] = []
    for item in items:
        key, message = str(item.get("key", "")), str(item.get("message", ""))
        if key == "data" and message == "'data'":
            errors.append(InvalidRequestError("the request body is missing; send a JSON object"))
            continue
        errors.append(_field_error("" if key == "data" else key, message))
    if not errors:
        return InvalidRequestError(exc.detail)
    first = errors[0]
    return InvalidRequestError("; ".join(e.message for e in errors), param=first.param)


def log_failure(what: str, exc: DukatError, throttle: WarningThrottle | None = None) -> None:
    """How a failed request is logged: a client's 4xx at DEBUG (the access line has its status); an
    expected 5xx (starting, overloaded, a worker failed and being restarted) at WARNING with its
    reason, no traceback, once per reason and period; a bug (internal_error) with its traceback."""
    if exc.status < 500:
        logger.debug("%s: %s %s", what, exc.code, exc.message)
    elif isinstance(exc, InternalError):
        logger.error("%s: %s", what, exc.message, exc_info=exc)
    elif throttle is not None:
        throttle.warn(logger, f"{exc.code} {exc.message}", f"{what}: {exc.status} {exc.code}: {exc.message}")
    else:
        logger.warning("%s: %s %s: %s", what, exc.status, exc.code, exc.message)


def _dukat_handler(
    request: Request[Any, Any, Any], exc: DukatError, throttle: WarningThrottle | None = None
) -> Response[bytes]:
    log_failure(f"{request.method} {request.url.path} failed", exc, throttle)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    detail = exc.detail()
    manager = getattr(request.app.state, "manager", None)
    if manager is not None and not is_admin(request.scope):  # no server path reaches a client
        detail.message = without_paths(detail.message, manager.settings.models_dir)
    return error_response(exc.status, detail, headers)


def _validation_handler(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    return _dukat_handler(request, _validation_error(exc))


def _bad_json_message(request: Request[Any, Any, Any], exc: HTTPException) -> str:
    message = f"the request body is not valid JSON ({exc.detail})"
    content_type = request.headers.get("content-type", "")
    if content_type and "json" not in content_type:
        message += f"; Content-Type was {content_type!r}, send application/json"
    return message


def _http_detail(request: Request[Any, Any, Any], exc: HTTPException) -> ErrorDetail:
    status = exc.status_code
    if isinstance(exc.__cause__, SerializationException):
        return InvalidRequestError(_bad_json_message(request, exc)).detail()
    if status == 404 and exc.detail == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed for {request.url.path}"
    else:
        message = exc.detail
    return error_for_status(status, message).detail()


def _undecodable_body_handler(request: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[bytes]:
    """litestar's JSON decoding lets a body that is not UTF-8 escape as a bare UnicodeDecodeError
    (it only wraps msgspec's DecodeError): a 400 when the bytes that failed are the request body's."""
    body = ScopeState.from_scope(request.scope).body
    if isinstance(body, bytes) and exc.object and bytes(exc.object) in body:
        error = InvalidRequestError(f"the request body is not valid JSON: it is not UTF-8 ({exc.reason})")
        return _dukat_handler(request, error)
    return _unexpected_handler(request, exc)


def _http_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if exc.status_code >= 500:
        return _unexpected_handler(request, exc)
    return error_response(exc.status_code, _http_detail(request, exc), exc.headers)


def _unexpected_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.error("%s %s failed with an unexpected error", request.method, request.url.path, exc_info=exc)
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = ErrorDetail(message=_INTERNAL_MESSAGE, type="server_error", code="internal_error")
    return error_response(status, detail)


def exception_handlers() -> ExceptionHandlersMap:
    """For `Litestar(exception_handlers=...)`: litestar picks the most specific class by MRO."""
    throttle = WarningThrottle()  # this app's: repeated 503s make one line per reason and period
    return {
        DukatError: partial(_dukat_handler, throttle=throttle),
        ValidationException: _validation_handler,
        HTTPException: _http_handler,
        UnicodeDecodeError: _undecodable_body_handler,
        Exception: _unexpected_handler,
    }
