"""The grammar rows on a real tokenizer with random logits (the weakest possible model): strict
schemas always end complete and valid within the budget; what can't fit or compile is a 400."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import torch
import xgrammar
from pydantic import BaseModel, Field

from shared.errors import InvalidRequestError
from shared.generation import Constraint
from worker.model.grammar import Grammars, RowGrammar

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"k": {"type": "string"}, "v": {"type": "boolean"}},
                "required": ["k", "v"],
            },
        },
    },
    "required": ["name", "age", "score", "ok", "color", "items"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def grammars(tiny_model_dir: Callable[[str], Path]) -> tuple[Grammars, object]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("tinyllama"))
    return Grammars(
        tokenizer, vocab_size=len(tokenizer), stop_ids=frozenset([tokenizer.eos_token_id])
    ), tokenizer


def random_model_output(
    grammars: Grammars,
    tokenizer: object,
    constraint: Constraint,
    budget: int,
    seed: int,
    bias: torch.Tensor | None = None,
    check: Callable[[RowGrammar, int], None] | None = None,
) -> str:
    """What a model of random logits (plus `bias`) writes under the grammar, sampling like the
    scheduler does; `check(row, remaining)` sees the row after each token. An output the budget
    cut off raises."""
    generator = torch.Generator().manual_seed(seed)
    row = grammars.row(constraint, budget)
    vocab = grammars.vocab_size
    out: list[int] = []
    for produced in range(budget):
        remaining = budget - produced
        token = row.forced(remaining)
        if token is None:
            logits = torch.randn(1, vocab, generator=generator) * 4
            if bias is not None:
                logits += bias
            grammars.mask(logits, [(0, row)])
            sampled = int(torch.multinomial(torch.softmax(logits[0], -1), 1, generator=generator))
            token = row.accept(sampled, remaining)
        elif token not in grammars.stop_ids:
            row.take(token)
        if token in grammars.stop_ids:
            break
        out.append(token)
        if check is not None:
            check(row, remaining - 1)
    else:
        raise AssertionError(f"seed {seed}: cut by the budget of {budget} (finish reason length)")
    return tokenizer.decode(out, skip_special_tokens=True)  # type: ignore[attr-defined]


@pytest.mark.parametrize("budget", [70, 256])
def test_strict_schema_output_is_valid_for_every_seed_within_the_budget(grammars, budget: int) -> None:
    book, tokenizer = grammars
    constraint = Constraint(kind="json", schema=json.dumps(SCHEMA))
    for seed in range(12):
        text = random_model_output(book, tokenizer, constraint, budget, seed)
        jsonschema.validate(json.loads(text), SCHEMA)


# Long shortest outputs, optional structures with long minimums, anyOf branches of unequal minimums,
# bounded strings and arrays that a plan kept from an earlier state may overrun.
LONG_MINIMUMS = {
    "long_array": {
        "type": "object",
        "properties": {
            "notes": {"type": "array", "minItems": 25, "items": {"type": "string", "minLength": 3}}
        },
        "required": ["notes"],
    },
    "optional_big": {
        "type": "object",
        "properties": {
            "a": {"type": "integer"},
            "big": {"type": "array", "minItems": 12, "items": {"type": "string", "minLength": 2}},
            "c": {"type": "string", "minLength": 6},
        },
        "required": ["a"],
    },
    "any_of": {
        "anyOf": [
            {"type": "integer"},
            {
                "type": "object",
                "properties": {"x": {"type": "array", "minItems": 10, "items": {"type": "integer"}}},
                "required": ["x"],
            },
        ]
    },
    "bounded": {
        "type": "array",
        "items": {"type": "string", "minLength": 2, "maxLength": 4},
        "minItems": 6,
        "maxItems": 8,
    },
}


def holds_its_plan(book: Grammars) -> Callable[[RowGrammar, int], None]:
    """A check of the budget invariant after each token: the row's plan, taken token by token on a
    fork, leads to where a stop token is accepted, and fits what is left; a fresh plan is the
    closing policy's own from the current state (`_Closer.need`'s count)."""
    planned = {"runs": 0}

    def check(row: RowGrammar, remaining: int) -> None:
        if row.ended:
            return
        plan, fork = row.plan, row.matcher.fork()
        assert row.need == len(plan) < remaining, (row.need, remaining)
        assert all(fork.accept_token(t) for t in plan) and fork.accept_token(book.stop_ids[0])
        if row.plans != planned.setdefault(id(row), 1):  # planned anew at this step
            planned[id(row)] = row.plans
            assert row.need == book.closer.need(row.matcher, limit=remaining)
        planned["runs"] += 1

    return check


@pytest.mark.parametrize("schema", LONG_MINIMUMS.values(), ids=LONG_MINIMUMS.keys())
def test_the_need_is_never_underestimated_under_tight_budgets(grammars, schema: dict[str, object]) -> None:
    """Every output ends complete and valid with a stop, at every budget from its shortest output
    up; after every token the row holds a way to end that fits the rest of the budget."""
    book, tokenizer = grammars
    constraint = Constraint(kind="json", schema=json.dumps(schema))
    # From the shortest output (or the static limit's floor for an optional minItems) up.
    shortest = max(book.row(constraint, 4096).need + 1, 16)
    for budget in (shortest, shortest + 3, shortest + 24):
        for seed in range(6):
            check = holds_its_plan(book)
            text = random_model_output(book, tokenizer, constraint, budget, seed, check=check)
            jsonschema.validate(json.loads(text), schema)


def test_a_regex_with_a_long_minimum_ends_within_tight_budgets(grammars) -> None:
    book, tokenizer = grammars
    constraint = Constraint(kind="regex", regex=r"([a-z]{3,}[0-9]?,){8,}[0-9]{4}")
    shortest = book.row(constraint, 4096).need + 1
    for budget in (shortest, shortest + 3, shortest + 24):
        for seed in range(6):
            text = random_model_output(book, tokenizer, constraint, budget, seed, check=holds_its_plan(book))
            assert re.fullmatch(r"([a-z]{3,}[0-9]?,){8,}[0-9]{4}", text), text


def test_a_long_minimum_is_not_replanned_at_every_token(grammars) -> None:
    """The closing policy plans the whole way anew only when no plan made of the old one ends the
    output: not at each of a string's characters, nor at each string closed."""
    book, tokenizer = grammars
    constraint = Constraint(kind="json", schema=json.dumps(LONG_MINIMUMS["long_array"]))
    rows: list[RowGrammar] = []
    steps = {"n": 0}

    def count(row: RowGrammar, remaining: int) -> None:
        rows[:] = [row]
        steps["n"] += 1

    random_model_output(book, tokenizer, constraint, 400, 0, check=count)
    assert rows[0].plans <= 4, (rows[0].plans, steps["n"])  # it was ~1 per token, then ~1 per 20


class Pet(BaseModel):
    kind: str = Field(min_length=2, max_length=8)
    legs: int


class Owner(BaseModel):
    name: str = Field(min_length=3)
    pets: list[Pet]
    best: Pet | None = None


BOUNDED = {
    "min_length": {"type": "string", "minLength": 3},
    "max_length": {"type": "string", "maxLength": 3},
    "both_bounds": {"type": "string", "minLength": 2, "maxLength": 6},
    "long_bound": {"type": "string", "maxLength": 5000},
    "array_of_bounded": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 2},
    "pattern": {"type": "string", "pattern": "^[a-z]+[0-9]?$"},
    "refs_and_all_of": {
        "$defs": {"Tag": {"type": "string", "minLength": 1, "maxLength": 5}},
        "allOf": [{"type": "object", "properties": {"t": {"$ref": "#/$defs/Tag"}}, "required": ["t"]}],
    },
    "all_of_beside_properties": {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "allOf": [
            {"properties": {"b": {"type": "string", "maxLength": 2}}, "required": ["b"]},
            {"required": ["a"]},
        ],
    },
    "pydantic_nested": Owner.model_json_schema(),
}


@pytest.mark.parametrize("schema", BOUNDED.values(), ids=BOUNDED.keys())
def test_every_string_is_json_whatever_its_bounds(grammars, schema: dict[str, object]) -> None:
    """xgrammar's own bounded strings allow raw control characters; every seed must parse."""
    book, tokenizer = grammars
    constraint = Constraint(kind="json", schema=json.dumps(schema))
    for seed in range(16):
        text = random_model_output(book, tokenizer, constraint, 96, seed)
        jsonschema.validate(json.loads(text), schema)


def test_bounded_strings_take_escapes_as_one_character_and_no_control_characters(grammars) -> None:
    book, _ = grammars
    compiled = book.compile(Constraint(kind="json", schema=json.dumps({"type": "string", "minLength": 2})))

    def takes(text: str) -> bool:
        matcher = xgrammar.GrammarMatcher(compiled)
        return bool(matcher.accept_string(text) and matcher.accept_token(book.stop_ids[0]))

    assert takes('"ab"') and takes('"a\\nb"') and takes('"\\u00e9\\""')
    assert not takes('"a\x01b"') and not takes('"a\tb"') and not takes('"\\u00e9"')


@pytest.mark.parametrize("least", [1, 3, 70])  # 70: past the chain of one-character rules
def test_a_minimum_length_alone_counts_json_characters(grammars, least: int) -> None:
    """A string with a `minLength` and no `maxLength` is written as a chain of one-character rules
    then a plain string's rest: the same strings as before, an escape one character."""
    book, _ = grammars
    schema = json.dumps({"type": "string", "minLength": least})
    compiled = book.compile(Constraint(kind="json", schema=schema))

    def takes(text: str) -> bool:
        matcher = xgrammar.GrammarMatcher(compiled)
        return bool(matcher.accept_string(text) and matcher.accept_token(book.stop_ids[0]))

    short = "a" * (least - 1)
    assert takes(f'"{short}b"') and takes(f'"{short}\\u00e9"') and takes(f'"{short}\\"xyz"')
    assert takes(f'"{short}b{"c" * 200}"')
    assert not takes(f'"{short}"') and not takes(f'"{short}\x01"') and not takes(f'"{short}b\tc"')
    assert not takes(f'"{short}\\x"')


@pytest.mark.parametrize("bounds", [(0, 4), (2, 4), (3, 3), (1, 64), (0, 65)])  # 65: kept counted
def test_a_bounded_string_counts_json_characters(grammars, bounds: tuple[int, int]) -> None:
    """A string with a `maxLength` up to 64 is written as a rule per position: the same strings
    as before, an escape one character."""
    (least, most), (book, _) = bounds, grammars
    schema = json.dumps({"type": "string", "minLength": least, "maxLength": most})
    compiled = book.compile(Constraint(kind="json", schema=schema))

    def takes(text: str) -> bool:
        matcher = xgrammar.GrammarMatcher(compiled)
        return bool(matcher.accept_string(text) and matcher.accept_token(book.stop_ids[0]))

    for length in {least, most}:
        assert takes(f'"{"a" * length}"')
        assert takes(f'"{"a" * (length - 1)}\\u00e9"') if length else True
        assert not takes(f'"{"a" * (length - 1)}\x01"') if length else True
    assert not takes(f'"{"a" * (most + 1)}"') and not takes(f'"{"a" * most}\\n"')
    assert least == 0 or not takes(f'"{"a" * (least - 1)}"')


def surrogate_bias(book: Grammars) -> torch.Tensor:
    """Logits that favour the byte tokens of UTF-8 encoded surrogates (ED, then A0-BF, then 80-BF)."""
    bias = torch.zeros(1, book.vocab_size)
    for token, raw in enumerate(book.vocab[: book.vocab_size]):
        if raw == b"\xed" or (len(raw) == 1 and 0x80 <= raw[0] <= 0xBF):
            bias[0, token] = 12.0
    return bias


SURROGATE_PRONE = {
    "max_length": ({"type": "string", "maxLength": 4}, 4),
    "array_of_bounded": ({"type": "array", "items": {"type": "string", "maxLength": 2}, "maxItems": 2}, 2),
    "plain": ({"type": "string"}, None),
}


@pytest.mark.parametrize("case", SURROGATE_PRONE.values(), ids=SURROGATE_PRONE.keys())
def test_byte_tokens_never_write_a_surrogate_so_max_length_counts_what_is_decoded(grammars, case) -> None:
    """A byte-level model can write a surrogate's UTF-8 bytes one token at a time; xgrammar took each
    as one character, the decoder writes three U+FFFD: a `maxLength` 4 string came back 6 long."""
    (schema, longest), (book, tokenizer) = case, grammars
    constraint = Constraint(kind="json", schema=json.dumps(schema))
    for seed in range(8):
        text = random_model_output(book, tokenizer, constraint, 48, seed, bias=surrogate_bias(book))
        value = json.loads(text)
        strings = value if isinstance(value, list) else [value]
        assert "\ufffd" not in text, f"seed {seed}: {text!r}"
        jsonschema.validate(value, schema)
        assert longest is None or all(len(s) <= longest for s in strings)


def test_regex_any_character_is_never_a_surrogate(grammars) -> None:
    book, tokenizer = grammars
    constraint = Constraint(kind="regex", regex=r"x.{2}y")
    for seed in range(8):
        text = random_model_output(book, tokenizer, constraint, 16, seed, bias=surrogate_bias(book))
        assert "\ufffd" not in text and len(text) == 4, f"seed {seed}: {text!r}"


def test_json_object_mode_gives_an_object(grammars) -> None:
    book, tokenizer = grammars
    for seed in range(4):
        assert isinstance(
            json.loads(random_model_output(book, tokenizer, Constraint(kind="json"), 48, seed)), dict
        )


def test_choice_and_regex_constraints(grammars) -> None:
    book, tokenizer = grammars
    choice = Constraint(kind="choice", choices=["yes", "no", "maybe"])
    regex = Constraint(kind="regex", regex=r"[0-9]{3}-[a-z]{2}")
    for seed in range(4):
        assert random_model_output(book, tokenizer, choice, 8, seed) in {"yes", "no", "maybe"}
        assert len(random_model_output(book, tokenizer, regex, 16, seed)) == 6


def test_a_schema_whose_smallest_output_cant_fit_the_budget_is_a_400(grammars) -> None:
    book, _ = grammars
    with pytest.raises(InvalidRequestError, match=r"needs \d+ tokens .*, but at most 5") as info:
        book.row(Constraint(kind="json", schema=json.dumps(SCHEMA)), 5)
    assert info.value.param == "max_tokens"


def test_a_construct_the_engine_cant_take_is_a_400_naming_it_unless_not_strict(grammars) -> None:
    book, tokenizer = grammars
    schema = json.dumps({"type": "string", "pattern": "(?<=a)b"})
    with pytest.raises(InvalidRequestError, match="Lookbehind") as info:
        book.row(Constraint(kind="json", schema=schema), 64)
    assert info.value.status == 400
    best_effort = Constraint(kind="json", schema=schema, strict=False)
    assert isinstance(json.loads(random_model_output(book, tokenizer, best_effort, 32, 0)), dict)


def test_a_row_whose_model_rules_out_every_allowed_token_still_gets_a_choice(grammars) -> None:
    book, _ = grammars
    row = book.row(Constraint(kind="choice", choices=["yes", "no"]), 8)
    logits = torch.full((2, book.vocab_size), float("-inf"))
    logits[:, 0] = 5.0  # only a token the grammar forbids is possible in the model's eyes
    book.mask(logits, [(1, row)])
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    assert allowed and all(row.matcher.fork().accept_token(t) for t in allowed)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [0]  # a free row is untouched
