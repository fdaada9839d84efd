"""The error table: one class per failure, each fixing its HTTP status, OpenAI `type` and `code`.

Errors are raised, never returned. The gateway's handlers render any `DukatError` as OpenAI's
`{"error": {"message", "type", "param", "code"}}`; the worker wire carries them by `code`.
Python's own exceptions are never mapped to 4xx: an unexpected exception is a 500 (`InternalError`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail


# OpenAI's error `type` follows from the status: one rule, not a column restated per class.
_TYPE_OF_STATUS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def _openai_type(status: int) -> str:
    return "server_error" if status >= 500 else _TYPE_OF_STATUS.get(status, "invalid_request_error")


class DukatError(Exception):
    """Base of every failure that reaches a user.

    Each subclass is one row of the table, its status and code (and a default Retry-After) given as
    class keywords; a subclass without a status keeps its parent's.
    """

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"
    # Seconds a client should wait before retrying (sent as Retry-After), for 429/503: the class's
    # default, or what the raiser knows better (a worker's queue).
    retry_after: int | None = None

    def __init_subclass__(
        cls, *, code: str, status: int | None = None, retry_after: int | None = None, **kw: Any
    ) -> None:
        super().__init_subclass__(**kw)
        cls.code = code
        if status is not None:
            cls.status = status
        cls.type = _openai_type(cls.status)
        if retry_after is not None:
            cls.retry_after = retry_after

    def __init__(self, message: str, *, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if retry_after is not None:
            self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole (the gateway's intake process raises them in the gateway): param included.
        return (_rebuilt, (type(self), self.message, self.param, self.retry_after))

    def detail(self) -> ErrorDetail:
        return ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)

    def body(self) -> ErrorBody:
        return ErrorBody(error=self.detail())

    def to_dict(self) -> dict[str, Any]:
        return {"error": msgspec.to_builtins(self.detail())}


def _rebuilt(cls: type[DukatError], message: str, param: str | None, retry_after: int | None) -> DukatError:
    return cls(message, param=param, retry_after=retry_after)


class InvalidRequestError(DukatError, status=400, code="invalid_request"): ...


class ContextLengthExceededError(InvalidRequestError, code="context_length_exceeded"): ...


class UnsupportedTaskError(InvalidRequestError, code="unsupported_task"):
    """E.g. chat completions asked of an embedding model, or embeddings of a chat model."""


class ModelTooLargeError(InvalidRequestError, code="model_too_large"):
    """A pull bigger than DUKAT_MAX_MODEL_BYTES."""


class UnsupportedModelTypeError(InvalidRequestError, code="unsupported_model_type"): ...


class QuantizationError(InvalidRequestError, code="quantization_unsupported"):
    """A quantization the device or the model cannot take (found at load, not at the first request)."""


class DeviceUnavailableError(InvalidRequestError, code="device_unavailable"): ...


class InvalidConfigError(DukatError, status=500, code="invalid_config"):
    """The model config file exists but is not valid; never silently reset."""


class SettingsError(DukatError, status=500, code="invalid_settings"): ...


class AuthenticationError(DukatError, status=401, code="invalid_api_key"): ...


class PermissionDeniedError(DukatError, status=403, code="permission_denied"):
    """A valid key without the right role (an inference key on an admin route)."""


class PullNotAllowedError(PermissionDeniedError, code="pull_not_allowed"):
    """A hub repo DUKAT_PULL_ALLOW does not match."""


class NotFoundError(DukatError, status=404, code="not_found"): ...


class ModelNotFoundError(NotFoundError, code="model_not_found"): ...


class GatedModelError(DukatError, status=403, code="gated_model"): ...


class MethodNotAllowedError(DukatError, status=405, code="method_not_allowed"): ...


class RequestTooLargeError(DukatError, status=413, code="request_too_large"): ...


class UnsupportedMediaTypeError(DukatError, status=415, code="unsupported_media_type"): ...


class ConflictError(DukatError, status=409, code="conflict"): ...


class OverloadedError(DukatError, status=429, code="overloaded", retry_after=1): ...


class RateLimitExceededError(DukatError, status=429, code="rate_limit_exceeded", retry_after=1):
    """A key's own limit (requests or tokens per minute, requests in flight) at this gateway."""


class InternalError(DukatError, status=500, code="internal_error"): ...


class InsufficientStorageError(DukatError, status=507, code="insufficient_storage"):
    """A pull that would not fit in the free space of models_dir's file system."""


class HubUnreachableError(DukatError, status=502, code="hub_unreachable"): ...


class WorkerFailedError(DukatError, status=502, code="worker_failed"): ...


class WorkerUnreachableError(WorkerFailedError, code="worker_unreachable"):
    """No connection to the model worker: the request never reached it (safe to send elsewhere)."""


class ModelNotLoadedError(DukatError, status=503, code="model_not_loaded", retry_after=1): ...


class ModelLoadFailedError(DukatError, status=503, code="model_load_failed"): ...


class ShuttingDownError(DukatError, status=503, code="shutting_down", retry_after=1):
    """The server is stopping: what was still running when its grace period ended."""


class ModelOutOfMemoryError(ModelLoadFailedError, code="out_of_memory"):
    """A load ran out of device memory (or the kernel's OOM killer ended the worker)."""


class NoCapacityError(DukatError, status=503, code="no_capacity", retry_after=5):
    """No worker host has a device with room for the model."""


class RequestTimeoutError(DukatError, status=504, code="timeout"):
    """A model worker did not answer in time."""


class StreamStalledError(DukatError, status=408, code="stream_stalled"):
    """A stream's client read nothing for DUKAT_STREAM_STALL_TIMEOUT_S: its generation was cancelled."""


def _all_subclasses(cls: type[DukatError]) -> list[type[DukatError]]:
    out: list[type[DukatError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


# code -> class, so an error crossing the worker wire comes back as the same class.
ERRORS_BY_CODE: dict[str, type[DukatError]] = {c.code: c for c in _all_subclasses(DukatError)}


def error_from_code(
    code: str | None, message: str, param: str | None = None, retry_after: int | None = None
) -> DukatError:
    cls = ERRORS_BY_CODE.get(code or "", InternalError)
    return cls(message, param=param, retry_after=retry_after)


# A framework's own HTTP errors (unknown route, wrong method, body too large, ...) by status. The one
# status -> error map: the gateway's handlers and the worker host's both use it.
ERRORS_BY_STATUS: dict[int, type[DukatError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    413: RequestTooLargeError,
    415: UnsupportedMediaTypeError,
    429: OverloadedError,
}


def error_for_status(status: int, message: str) -> DukatError:
    """A framework's HTTP error as the table's entry for its status (any other 4xx: a 400)."""
    cls = ERRORS_BY_STATUS.get(status) or (InvalidRequestError if 400 <= status < 500 else InternalError)
    return cls(message)
