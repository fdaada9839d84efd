"""Pure checks: model ids that are names, not paths; the JSON depth scan."""

from __future__ import annotations

import pytest

from gateway.limits import json_depth_exceeds
from shared.errors import InvalidRequestError
from shared.model_ids import check_model_id, is_explicit_path

GOOD = ["gpt2", "org/name", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "tiny/t5", "a_b.c-d", "_x/y"]
BAD = {
    "": "empty",
    "../etc": "segment '..'",
    "a/../../etc": "segment '..'",
    "a/..": "segment '..'",
    "/etc/passwd": "not a path",
    "~root/models": "not a path",
    "~/models": "not a path",
    "\\\\server\\share": "not a path",
    "a//b": "empty path segment",
    "a/": "empty path segment",
    "./a": "segment",
    ".hidden/x": "segment",
    "a/.": "segment",
    "a\nb": "control",
    "a\x00b": "control",
    "a\x7f": "control",
    "a\u0085b": "control",
    "a b": "segment",
    "a:b": "segment",
    "a%2Fb": "segment",
    "é/x": "segment",
    "-flag": "segment",
    "x" * 300: "limit of 256",
    "/".join(["x" * 200] * 2): "limit of 256",
}


@pytest.mark.parametrize("model_id", GOOD)
def test_names_pass(model_id: str) -> None:
    assert check_model_id(model_id, max_length=256) == model_id


@pytest.mark.parametrize(("model_id", "why"), BAD.items(), ids=[repr(k)[:30] for k in BAD])
def test_paths_and_junk_are_a_400_naming_why(model_id: str, why: str) -> None:
    with pytest.raises(InvalidRequestError, match=why) as caught:
        check_model_id(model_id, max_length=256)
    assert caught.value.param == "model" and caught.value.status == 400


def test_a_long_segment_within_the_length_limit_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="255 bytes"):
        check_model_id("a/" + "b" * 256, max_length=1000)


def test_config_entries_pass_as_the_operator_wrote_them() -> None:
    mine = "/opt/models/mine"
    assert check_model_id(mine, max_length=256, allowed={mine}) == mine
    with pytest.raises(InvalidRequestError):
        check_model_id("/opt/models/other", max_length=256, allowed={mine})


def test_explicit_paths() -> None:
    assert all(map(is_explicit_path, ["/a", "~/a", "~u/a", "./a", "../a", ".", ".."]))
    assert not any(map(is_explicit_path, ["a", "org/name", "a/../b"]))


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    assert not json_depth_exceeds(b'{"a": [[1], [2]]}', 3)
    assert json_depth_exceeds(b'{"a": [[[1]]]}', 3)
    assert not json_depth_exceeds(b'{"a": "[[[[[[[[[[[[{{{{{{{{"}', 3)
    assert not json_depth_exceeds(b'{"a": "\\"[[[[[[[[[[[[", "b": [1]}', 3)
    assert json_depth_exceeds(b'{"tools": [' + b"[" * 10_000 + b"]" * 10_000 + b"]}", 64)
    assert not json_depth_exceeds(b"[" + b"[1]," * 10_000 + b"[2]]", 64)
