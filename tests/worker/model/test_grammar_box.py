"""Client grammars in a box: static limits refuse the known bombs at once, the compile child turns a
native crash, a deadline or a memory cap into a 400 while this process goes on, and compiled
grammars (and refusals) are kept in an LRU bounded in bytes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.errors import InvalidRequestError
from shared.generation import Constraint
from worker.model.grammar import Grammars
from worker.model.grammar_cache import SizedLru
from worker.model.grammar_limits import GrammarLimits

# Past every static limit: what reaches the grammar engine is up to the compile box.
UNLIMITED = {"max_chars": 10**8, "max_nodes": 10**7, "max_ref_chain": 10**7, "max_choices": 10**7}


def chain(links: int) -> dict[str, Any]:
    defs: dict[str, Any] = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(links)}
    defs[f"d{links}"] = {"type": "string"}
    return {"$ref": "#/$defs/d0", "$defs": defs}


# An object whose required property is itself: xgrammar's forced string from it never ends.
ENDLESS = {
    "$ref": "#/$defs/a",
    "$defs": {"a": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "required": ["x"]}},
}
TREE = {
    "$ref": "#/$defs/node",
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["name", "kids"],
        }
    },
}


def schema(value: Any) -> Constraint:
    return Constraint(kind="json", schema=json.dumps(value))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Callable[[str], Path]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir("tinyllama"))


def grammars_of(tokenizer: Any, limits: GrammarLimits) -> Grammars:
    return Grammars(
        tokenizer, vocab_size=len(tokenizer), stop_ids=frozenset([tokenizer.eos_token_id]), limits=limits
    )


@pytest.fixture(scope="module")
def guarded(tokenizer: Any) -> Any:
    grammars = grammars_of(tokenizer, GrammarLimits())
    grammars.compile(schema({"type": "string"}))  # the compile child is up before anything is timed
    yield grammars
    grammars.close()


@pytest.fixture(scope="module")
def boxed(tokenizer: Any) -> Any:
    """Static limits off, a 2 s deadline on the compile child."""
    grammars = grammars_of(tokenizer, GrammarLimits(**UNLIMITED, compile_timeout_s=2.0))
    grammars.compile(schema({"type": "string"}))  # the child is up before anything is timed
    yield grammars
    grammars.close()


BOMBS = {
    "a 20,000-link $ref chain": (schema(chain(20_000)), "DUKAT_GRAMMAR_MAX_CHARS"),
    "a 100-link $ref chain": (schema(chain(100)), "DUKAT_GRAMMAR_MAX_REF_CHAIN"),
    "a $ref loop": (
        schema({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}),
        "refers to itself",
    ),
    "10,000 optional properties": (
        schema({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(10_000)}}),
        "DUKAT_GRAMMAR_MAX_CHARS",
    ),
    "3,000 optional properties": (
        schema({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(3_000)}}),
        "DUKAT_GRAMMAR_MAX_NODES",
    ),
    "a 2 MB const": (schema({"const": "x" * 2_000_000}), "DUKAT_GRAMMAR_MAX_CHARS"),
    "a 20,000-value enum": (schema({"enum": list(range(20_000))}), "DUKAT_GRAMMAR_MAX_CHARS"),
    "a 5,000-value enum": (schema({"enum": list(range(5_000))}), "DUKAT_GRAMMAR_MAX_CHOICES"),
    "a 200,000-value choice": (
        Constraint(kind="choice", choices=[f"c{i}" for i in range(200_000)]),
        "DUKAT_GRAMMAR_MAX_CHOICES",
    ),
    "a schema 40 levels deep": (
        schema(json.loads('{"type": "array", "items": ' * 40 + "{}" + "}" * 40)),
        "DUKAT_GRAMMAR_MAX_DEPTH",
    ),
    "a 200,000-character regex": (Constraint(kind="regex", regex="a" * 200_000), "DUKAT_GRAMMAR_MAX_CHARS"),
    "minLength 10^9": (schema({"type": "string", "minLength": 10**9}), "minLength: 1000000000"),
    "minItems 10^6": (schema({"type": "array", "items": {"type": "integer"}, "minItems": 10**6}), "minItems"),
    "a required recursion (no finite output)": (schema(ENDLESS), "has no finite instance"),
    "an anyOf branch that requires itself": (
        schema({"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/a"}], "$defs": ENDLESS["$defs"]}),
        "has no finite instance",
    ),
    "a regex forcing 10^6 characters": (
        Constraint(kind="regex", regex="^(a{1000}){1000}$"),
        "repeats a part",
    ),
    "a pattern forcing 10^6 characters": (
        schema({"type": "string", "pattern": "(ab{1000}){1000}"}),
        "repeats",
    ),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_grammar_bomb_is_a_400_naming_its_limit_in_well_under_a_second(
    guarded: Grammars, name: str
) -> None:
    constraint, named = BOMBS[name]
    started = time.perf_counter()
    with pytest.raises(InvalidRequestError) as refused:
        guarded.row(constraint, budget=256)
    assert named in refused.value.message, refused.value.message
    assert time.perf_counter() - started < 1.0


def test_a_recursive_schema_with_a_way_out_is_served(guarded: Grammars) -> None:
    assert guarded.row(schema(TREE), budget=64).need >= 1  # kids may be empty


def test_a_bomb_is_refused_even_when_the_schema_is_not_strict(guarded: Grammars) -> None:
    lax = Constraint(kind="json", schema=json.dumps(chain(100)), strict=False)
    with pytest.raises(InvalidRequestError, match="DUKAT_GRAMMAR_MAX_REF_CHAIN"):
        guarded.row(lax, budget=256)


def test_a_native_crash_of_the_grammar_engine_is_a_400_and_this_process_goes_on(boxed: Grammars) -> None:
    bomb = schema(chain(20_000))
    with pytest.raises(InvalidRequestError, match="crashed with SIGSEGV"):
        boxed.compile(bomb)  # xgrammar overflows its native stack
    started = time.perf_counter()
    with pytest.raises(InvalidRequestError, match="crashed with SIGSEGV"):
        boxed.compile(bomb)  # the refusal is cached: no second crash, no wait
    assert time.perf_counter() - started < 0.2
    assert boxed.row(schema({"type": "integer"}), budget=16).need >= 1  # a new child compiles


def test_a_compile_past_its_deadline_is_a_400_within_the_deadline(boxed: Grammars) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidRequestError, match="took longer than 2 s"):
        boxed.compile(schema({"const": "x" * 2_000_000}))  # > 30 s unboxed
    assert time.perf_counter() - started < 4.0
    assert boxed.row(schema({"type": "boolean"}), budget=16).need >= 1


def test_a_compile_past_its_memory_cap_is_a_400(tokenizer: Any) -> None:
    grammars = grammars_of(tokenizer, GrammarLimits(**UNLIMITED, compile_memory_bytes=32 * 2**20))
    try:
        with pytest.raises(InvalidRequestError, match="DUKAT_GRAMMAR_COMPILE_MEMORY_BYTES"):
            grammars.compile(schema(chain(20_000)))
    finally:
        grammars.close()


def test_compiled_grammars_are_kept_within_the_cache_bytes(tokenizer: Any) -> None:
    grammars = grammars_of(tokenizer, GrammarLimits(cache_bytes=200_000))
    try:
        for i in range(30):
            grammars.compile(schema({"type": "object", "properties": {f"k{i}": {"type": "string"}}}))
        assert 0 < grammars._cache.size <= 200_000
        assert len(grammars._cache) < 30
    finally:
        grammars.close()


def test_the_sized_lru_drops_the_least_recently_used_and_keeps_nothing_too_big() -> None:
    lru: SizedLru[str] = SizedLru(10)
    lru.put("a", "A", 4)
    lru.put("b", "B", 4)
    assert lru.get("a") == "A"  # now b is the least recently used
    lru.put("c", "C", 4)
    assert (lru.get("a"), lru.get("b"), lru.get("c"), lru.size) == ("A", None, "C", 8)
    lru.put("huge", "H", 11)
    assert lru.get("huge") is None and lru.size == 8
