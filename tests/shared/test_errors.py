"""The error table: every class renders OpenAI's error body and crosses the worker wire by code."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from shared import errors as e
from shared.errors import (
    ERRORS_BY_CODE,
    ERRORS_BY_STATUS,
    DukatError,
    ErrorBody,
    error_for_status,
    error_from_code,
)
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

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_error_table() -> dict[int, set[str]]:
    """The README's error table: status -> the codes its row lists."""
    rows: dict[int, set[str]] = {}
    for line in README.read_text().splitlines():
        if found := re.match(r"^\| (\d{3}) \| (.*?) \|", line):
            rows.setdefault(int(found[1]), set()).update(re.findall(r"`([a-z_]+)`", found[2]))
    return rows


def test_the_readme_documents_every_error_status_and_code() -> None:
    # The table users read is the one the code raises: a new class needs its row there.
    documented = readme_error_table()
    for cls in CONCRETE:
        assert cls.code in documented.get(cls.status, set()), f"README lacks {cls.status} `{cls.code}`"
    raised = {(c.status, c.code) for c in CONCRETE}
    assert {(s, c) for s, codes in documented.items() for c in codes} <= raised


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda c: c.__name__)
def test_client_errors_are_never_typed_as_server_errors(cls: type[DukatError]) -> None:
    assert 400 <= cls.status < 600
    assert (cls.type == "server_error") == (cls.status >= 500), cls


@pytest.mark.parametrize("status", sorted(ERRORS_BY_STATUS))
def test_a_framework_status_becomes_the_table_entry_of_that_status(status: int) -> None:
    error = error_for_status(status, "from the framework")
    assert (error.status, error.message) == (status, "from the framework")


@pytest.mark.parametrize(
    ("status", "code"), [(400, "invalid_request"), (418, "invalid_request"), (503, "internal_error")]
)
def test_a_status_without_an_entry_is_a_400_or_a_500(status: int, code: str) -> None:
    assert error_for_status(status, "x").code == code


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
