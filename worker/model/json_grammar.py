"""A JSON schema as the EBNF the grammar engine compiles, with its string rules made JSON-safe.

xgrammar (0.2.8) writes a string with `minLength`/`maxLength` as `"\"" chars{min,max} "\""` over the
character class `[^"\\\r\n]`: raw control characters (tab, \x01 ...) are allowed and escapes are
not, so a weak model writes strings no JSON parser takes (12 of 12 seeds with `minLength`, measured
on the tiny random model). Its plain strings do it right (`[^\0-\x1f"\\]` or an escape). We take
xgrammar's own conversion of the schema and give each bounded string's character rule the plain
strings' alternatives, an escape counting as one character as JSON Schema counts it. Rewriting the
bounds into a `pattern` instead would cost a regex repetition: 0.8 s to compile at maxLength 1000,
29 s at 5000 (this rule's repetition: 0.08 s).

A string with a `minLength` and no `maxLength` (`"\"" chars{m, -1} "\""`) made every mask inside it
cost ~0.4 ms on the tiny test vocabulary (nearly every token is checked by running the parser), 100x
a plain string's: 8 such rows slowed the free rows of their batch. We write it as a chain of m rules,
each one character, then the plain strings' right-recursive rest ending at the quote (the same
language; masks ~2 us); a minimum past _CHAINED keeps a counted repetition for what is above it. A
`maxLength` up to _CHAINED is a rule per position (masks 127 us -> ~5 us at 4); a longer one stays
counted (its masks cost ~0.3 ms at 40, 1.5 ms at 5000: a chain of 5000 rules compiles in 4 s).

xgrammar also reads an `allOf` with more than one part, or beside other keywords (pydantic and
hand-written schemas put `{"allOf": [{"required": [...]}]}` next to `properties`), as *any JSON*:
we merge such parts into one schema first (properties joined, required united) when they don't
conflict.

xgrammar (0.2.8) takes a UTF-8 encoded surrogate (ED A0 80 .. ED BF BF) as one character of `[^...]`
and of `.`, though it is no text: the detokenizer writes each as three U+FFFD, so on a byte-level
model a string of `maxLength` 4 came back 6 characters long. Every negated class (and regex's any
character) leaves out U+D800-U+DFFF (`without_surrogates`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import xgrammar as xg

# xgrammar's rule for one character of a length-bounded string, as it prints it.
_BOUNDED_CHARACTER = re.compile(r'^(\w+_characters) ::= \(\(\[\^\\"\\\\\\r\\n\]\)\)$', re.MULTILINE)
# One character of a JSON string: anything but a control character, `"` or `\`; or an escape.
_JSON_PLAIN = r"[^\0-\x1f\"\\]"
_JSON_ESCAPE = r'(([\"\\/bfnrt]) | ("u" [A-Fa-f0-9]{4}))'
_JSON_CHARACTER = rf'(({_JSON_PLAIN}) | ("\\" {_JSON_ESCAPE}))'
# A string with a length bound (a maximum of -1: none), as xgrammar prints it.
_BOUNDED_STRING = re.compile(
    r'^(\w+) ::= \(\("\\"" (\w+_characters)\{(\d+), (-1|\d+)\} "\\""\)\)$', re.MULTILINE
)
# The longest chain of one-character rules a bound is written as (a rule each, ~5 KB compiled).
_CHAINED = 64


def json_schema_ebnf(schema: str, *, strict_mode: bool = True) -> str:
    """The EBNF of `schema` (xgrammar's conversion, compact separators) with JSON-safe bounded
    strings and no surrogates. Raises what xgrammar raises for a schema it can't take."""
    grammar = xg.Grammar.from_json_schema(
        _with_all_of_merged(schema), any_whitespace=False, strict_mode=strict_mode
    )
    ebnf = _BOUNDED_CHARACTER.sub(lambda m: f"{m.group(1)} ::= {_JSON_CHARACTER}", str(grammar))
    return without_surrogates(_BOUNDED_STRING.sub(_chained, ebnf))


def _chained(match: re.Match[str]) -> str:
    """A bounded string as a chain of one-character rules (at least `m` characters, then the
    rest; or, with a maximum up to _CHAINED, one rule per position); a longer maximum as is."""
    name, characters, least, most = match.group(1), match.group(2), int(match.group(3)), int(match.group(4))
    if most >= 0:
        return _chained_up_to(name, least, most) if most <= _CHAINED else match.group(0)
    chained = min(least, _CHAINED)
    counted = f"{characters}{{{least - chained}}} " if least > chained else ""
    rules = [f'{name} ::= (("\\"" {counted}{name}_at_{chained}))']
    # `name`_at_k: k more characters at least, then the rest. The character's alternatives are
    # written out: as a reference to the one-character rule, masks cost 100x as much.
    for k in range(chained, 0, -1):
        rules.append(f"{name}_at_{k} ::= ({_one_character(f'{name}_at_{k - 1}')})")
    rules.append(f'{name}_at_0 ::= (("\\"") | {_one_character(f"{name}_at_0")})')
    return "\n".join(rules)


def _chained_up_to(name: str, least: int, most: int) -> str:
    """A string of `least` to `most` characters: `name`_pos_i after i characters."""
    rules = [f'{name} ::= (("\\"" {name}_pos_0))']
    for i in range(most):
        end = "" if i < least else '("\\"") | '
        rules.append(f"{name}_pos_{i} ::= ({end}{_one_character(f'{name}_pos_{i + 1}')})")
    rules.append(f'{name}_pos_{most} ::= (("\\""))')
    return "\n".join(rules)


def _one_character(then: str) -> str:
    """One character of a JSON string followed by the rule `then`, as EBNF alternatives."""
    return f'({_JSON_PLAIN} {then}) | ("\\\\" {_JSON_ESCAPE} {then})'


def regex_ebnf(regex: str) -> str:
    """The EBNF of `regex` (xgrammar's conversion) without surrogates."""
    return without_surrogates(str(xg.Grammar.from_regex(regex)))


# A quoted literal (left as is: a `const` may hold "[^"), or a character class.
_LITERAL_OR_CLASS = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]')
_ANY_CHARACTER = r"[\0-\U0010ffff]"


def without_surrogates(ebnf: str) -> str:
    """`ebnf` with U+D800-U+DFFF left out of its negated classes and of its any-character class."""

    def fix(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == _ANY_CHARACTER:
            return r"[^\ud800-\udfff]"
        if token.startswith("[^"):
            return r"[^\ud800-\udfff" + token[2:]
        return token

    return _LITERAL_OR_CLASS.sub(fix, ebnf)


# Keywords that say nothing about what validates: the first part's is kept.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "deprecated"})
_DATA = _ANNOTATIONS | {"const", "enum"}  # values, not schemas


def _with_all_of_merged(schema: str) -> str:
    try:
        value = json.loads(schema)
    except ValueError:
        return schema  # xgrammar names the problem
    return json.dumps(_merge_all_of(value))


def _merge_all_of(value: Any) -> Any:
    """`value` with every mergeable `allOf` folded into the schema holding it."""
    if isinstance(value, list):
        return [_merge_all_of(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: (v if k in _DATA else _merge_all_of(v)) for k, v in value.items()}
    parts = out.get("allOf")
    if not isinstance(parts, list) or (len(parts) == 1 and len(out) == 1):
        return out
    merged: dict[str, Any] | None = {k: v for k, v in out.items() if k != "allOf"}
    for part in parts:
        merged = _merged(merged, part) if merged is not None else None
    return merged if merged is not None else out


def _merged(a: dict[str, Any], b: Any) -> dict[str, Any] | None:
    """One schema that validates what both `a` and `b` validate; None when not simply mergeable."""
    if not isinstance(b, dict) or "$ref" in b or "$ref" in a:
        return None
    out = dict(a)
    for key, value in b.items():
        if key not in out or key in _ANNOTATIONS:
            out.setdefault(key, value)
        elif key == "properties" and isinstance(value, dict):
            props = dict(out[key])
            for name, schema in value.items():
                both = _merged(props[name], schema) if name in props else schema
                if both is None:
                    return None
                props[name] = both
            out[key] = props
        elif key == "required" and isinstance(value, list):
            out[key] = [*out[key], *(r for r in value if r not in out[key])]
        elif out[key] != value:
            return None
    return out
