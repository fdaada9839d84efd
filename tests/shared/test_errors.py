"""The error table: every class renders OpenAI's error body and crosses the worker wire by code."""

from __future__ import annotations

import msgspec
import pytest

from shared import errors as e
from shared.errors import ERRORS_BY_CODE, DukatError, ErrorBody, error_from_code
from tests.support import openapi_check


def all_error_classes() -> list[type[DukatError]]:
    found: list[type[DukatError]] = []
    pending = [DukatError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


CLASSES = all_error_classes()
CONCRETE = [c for c in CLASSES if c is not DukatError]

# (status, OpenAI type, code) per class: the table the gateway's handlers and clients rely on.
TABLE: dict[type[DukatError], tuple[int, str, str]] = {
    e.InvalidRequestError: (400, "invalid_request_error", "invalid_request"),
    e.ContextLengthExceededError: (400, "invalid_request_error", "context_length_exceeded"),
    e.UnsupportedTaskError: (400, "invalid_request_error", "unsupported_task"),
    e.UnsupportedModelTypeError: (400, "invalid_request_error", "unsupported_model_type"),
    e.QuantizationError: (400, "invalid_request_error", "quantization_unsupported"),
    e.DeviceUnavailableError: (400, "invalid_request_error", "device_unavailable"),
    e.AuthenticationError: (401, "authentication_error", "invalid_api_key"),
    e.GatedModelError: (403, "permission_error", "gated_model"),
    e.NotFoundError: (404, "invalid_request_error", "not_found"),
    e.ModelNotFoundError: (404, "invalid_request_error", "model_not_found"),
    e.MethodNotAllowedError: (405, "invalid_request_error", "method_not_allowed"),
    e.ConflictError: (409, "invalid_request_error", "conflict"),
    e.PayloadTooLargeError: (413, "invalid_request_error", "payload_too_large"),
    e.OverloadedError: (429, "rate_limit_error", "overloaded"),
    e.CancelledError: (499, "invalid_request_error", "cancelled"),
    e.InvalidConfigError: (500, "server_error", "invalid_config"),
    e.SettingsError: (500, "server_error", "invalid_settings"),
    e.InternalError: (500, "server_error", "internal_error"),
    e.HubUnreachableError: (502, "server_error", "hub_unreachable"),
    e.WorkerFailedError: (502, "server_error", "worker_failed"),
    e.WorkerUnreachableError: (502, "server_error", "worker_unreachable"),
    e.ModelNotLoadedError: (503, "server_error", "model_not_loaded"),
    e.ModelLoadFailedError: (503, "server_error", "model_load_failed"),
    e.NoCapacityError: (503, "server_error", "no_capacity"),
    e.ShuttingDownError: (503, "server_error", "shutting_down"),
    e.TimeoutError_: (504, "server_error", "timeout"),
}


def test_the_table_covers_every_error_class() -> None:
    # A new error class needs its row above: the table is the contract clients see.
    assert set(TABLE) == set(CONCRETE)


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda c: c.__name__)
def test_each_class_fixes_status_type_and_code(cls: type[DukatError]) -> None:
    assert (cls.status, cls.type, cls.code) == TABLE[cls]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("param", [None, "messages"])
def test_body_has_all_four_keys_and_matches_openai_schema(cls: type[DukatError], param: str | None) -> None:
    error = cls("something went wrong", param=param)
    body = error.to_dict()
    assert body == {
        "error": {"message": "something went wrong", "type": cls.type, "param": param, "code": cls.code}
    }
    openapi_check.validate(body, "ErrorResponse")
    wire = msgspec.json.decode(msgspec.json.encode(error.body()))
    assert wire == body  # the struct encodes null param/code too, never omits them
    openapi_check.validate(wire, "ErrorResponse")


def test_schema_check_rejects_a_body_without_param_or_code() -> None:
    # Guards the test above: the schema really requires both keys.
    assert openapi_check.errors({"error": {"message": "m", "type": "t"}}, "ErrorResponse")


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda c: c.__name__)
def test_error_from_code_round_trips_every_class(cls: type[DukatError]) -> None:
    original = cls("boom", param="model")
    again = error_from_code(original.code, original.message, original.param)
    assert type(again) is cls
    assert (again.message, again.param) == ("boom", "model")
    assert again.to_dict() == original.to_dict()


def test_codes_are_unique_across_classes() -> None:
    assert len(ERRORS_BY_CODE) == len(CONCRETE)
    assert set(ERRORS_BY_CODE.values()) == set(CONCRETE)


@pytest.mark.parametrize("code", [None, "", "no_such_code"])
def test_unknown_code_comes_back_as_internal_error(code: str | None) -> None:
    error = error_from_code(code, "lost")
    assert type(error) is e.InternalError
    assert error.status == 500


def test_errors_decode_from_the_wire_body() -> None:
    raw = b'{"error": {"message": "no", "type": "invalid_request_error", "param": null, "code": "not_found"}}'
    body = msgspec.json.decode(raw, type=ErrorBody)
    assert type(error_from_code(body.error.code, body.error.message, body.error.param)) is e.NotFoundError


def test_retry_after_only_for_429_and_503() -> None:
    for cls in CONCRETE:
        if cls.retry_after is not None:
            assert cls.status in (429, 503), cls
    assert e.OverloadedError.retry_after == 1
    assert e.NoCapacityError.retry_after == 5


def test_errors_are_exceptions_with_their_message() -> None:
    with pytest.raises(e.ModelNotFoundError, match="no model 'x'"):
        raise e.ModelNotFoundError("no model 'x'", param="model")
    assert issubclass(e.ModelNotFoundError, e.NotFoundError)
    assert issubclass(e.ContextLengthExceededError, e.InvalidRequestError)
