"""Static limits on what a client may ask the grammar engine to build, checked before it builds.

Measured on xgrammar 0.2.8 (this machine's CPU): a 20,000-link `$ref` chain crashes it (SIGSEGV, a
native stack overflow), 10,000 optional properties or a 2 MB `const` compile for more than 30 s, a
200,000-value choice takes 36 s, and a 20,000-value enum 1.4 s with 26 MB of grammar. Whatever
passes these checks is still compiled first in a child process with a deadline and a memory cap
(worker/model/grammar_probe.py); these checks make the usual bombs a 400 in microseconds, naming the
construct and the setting.

Lengths and counts a grammar forces (`minLength`, `minItems`, `minProperties`) are checked against
the token budget: output that can't be generated within `max_tokens` is refused before any work.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.errors import InvalidRequestError
from shared.generation import Constraint
from shared.settings import DEFAULTS, Settings

# Python's own regex parser (the syntax xgrammar reads is close enough to bound repeats with).
_regex_parser: Any = getattr(re, "_parser")  # noqa: B009 (private: typeshed has no stubs for it)
_constants: Any = getattr(re, "_constants")  # noqa: B009
_REPEATS = (_constants.MAX_REPEAT, _constants.MIN_REPEAT, getattr(_constants, "POSSESSIVE_REPEAT", None))

_KEYWORDS_OF_SUBSCHEMAS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


@dataclass(frozen=True)
class GrammarLimits:
    """The bounds on one client grammar (DUKAT_GRAMMAR_* settings)."""

    max_chars: int = DEFAULTS.grammar_max_chars
    max_depth: int = DEFAULTS.grammar_max_depth
    max_nodes: int = DEFAULTS.grammar_max_nodes
    max_ref_chain: int = DEFAULTS.grammar_max_ref_chain
    max_choices: int = DEFAULTS.grammar_max_choices
    compile_timeout_s: float = DEFAULTS.grammar_compile_timeout_s
    compile_memory_bytes: int = DEFAULTS.grammar_compile_memory_bytes
    cache_bytes: int = DEFAULTS.grammar_cache_bytes

    @classmethod
    def of(cls, settings: Settings) -> GrammarLimits:
        return cls(
            max_chars=settings.grammar_max_chars,
            max_depth=settings.grammar_max_depth,
            max_nodes=settings.grammar_max_nodes,
            max_ref_chain=settings.grammar_max_ref_chain,
            max_choices=settings.grammar_max_choices,
            compile_timeout_s=settings.grammar_compile_timeout_s,
            compile_memory_bytes=settings.grammar_compile_memory_bytes,
            cache_bytes=settings.grammar_cache_bytes,
        )

    def check(self, constraint: Constraint) -> None:
        """A 400 naming the first limit `constraint` passes (size, depth, subschemas, `$ref` chains,
        choices and enums)."""
        if constraint.kind == "choice":
            choices = constraint.choices or []
            self._count("choice", len(choices), self.max_choices, "DUKAT_GRAMMAR_MAX_CHOICES")
            self._size("choice list", sum(len(c) for c in choices))
        elif constraint.kind == "regex":
            self._size("regex", len(constraint.regex or ""))
            self._check_regex(constraint.regex or "")
        elif constraint.schema is not None:
            self._size("JSON schema", len(constraint.schema))
            self._check_schema(_decode(constraint.schema))

    def check_budget(self, constraint: Constraint, budget: int, longest_token: int) -> None:
        """A 400 when a length or count the schema forces can't be generated in `budget` tokens
        (each token holds at most `longest_token` characters; each item or property at least one)."""
        if constraint.kind != "json" or constraint.schema is None:
            return
        for node, _ in _walk(_decode(constraint.schema), 0):
            for key, per_token in (("minLength", longest_token), ("minItems", 1), ("minProperties", 1)):
                value = node.get(key)
                if isinstance(value, int) and value > budget * per_token:
                    raise InvalidRequestError(
                        f"the JSON schema's {key}: {value} can't be generated within {budget} tokens "
                        "(max_tokens); lower it or raise max_tokens",
                        param="response_format",
                    )

    def _check_schema(self, schema: Any) -> None:
        for nodes, (node, depth) in enumerate(_walk(schema, 0), start=1):
            if depth > self.max_depth:
                self._refuse("is nested too deep", self.max_depth, "DUKAT_GRAMMAR_MAX_DEPTH")
            if nodes > self.max_nodes:
                self._refuse("has too many subschemas", self.max_nodes, "DUKAT_GRAMMAR_MAX_NODES")
            if isinstance(node.get("pattern"), str):
                self._check_regex(node["pattern"])
            for key in ("enum", "anyOf", "oneOf", "allOf"):
                values = node.get(key)
                if isinstance(values, list):
                    self._count(key, len(values), self.max_choices, "DUKAT_GRAMMAR_MAX_CHOICES")
        if isinstance(schema, dict):
            self._check_refs(schema)
            endless = _endless(schema)
            if endless is not None:
                raise InvalidRequestError(
                    f"the JSON schema's {endless} has no finite instance (it requires itself); "
                    "make the recursion optional",
                    param="response_format",
                )

    def _check_regex(self, regex: str) -> None:
        """Nested repeats multiply (`(a{1000}){1000}` is 10^6 forced characters): xgrammar's forced
        string from such a state costs its length at every step of the closing policy."""
        repeats = _forced_repeats(regex)
        if repeats > self.max_chars:
            raise InvalidRequestError(
                f"the regex {regex[:80]!r} repeats a part at least {repeats} times; at most "
                f"{self.max_chars} are accepted for constrained decoding (DUKAT_GRAMMAR_MAX_CHARS)",
                param="response_format",
            )

    def _check_refs(self, root: dict[str, Any]) -> None:
        """Chains of schemas that are nothing but a `$ref` to the next one (a crash past ~10,000)."""
        targets: dict[str, str] = {}
        for name_key in ("$defs", "definitions"):
            defs = root.get(name_key)
            if isinstance(defs, dict):
                for name, sub in defs.items():
                    if isinstance(sub, dict) and isinstance(sub.get("$ref"), str):
                        targets[f"#/{name_key}/{name}"] = sub["$ref"]
        links: dict[str, int] = {}  # links from each definition to a schema that is not a bare $ref
        for start in targets:
            path: list[str] = []
            on_path: set[str] = set()
            ref = start
            while ref in targets and ref not in links:
                if ref in on_path:
                    raise InvalidRequestError(
                        f"the JSON schema's $ref {ref} refers to itself without any structure between",
                        param="response_format",
                    )
                path.append(ref)
                on_path.add(ref)
                ref = targets[ref]
            count = links.get(ref, 0)
            for ref in reversed(path):  # each definition is walked once: linear in the schema
                count += 1
                links[ref] = count
            if count > self.max_ref_chain:
                self._refuse(
                    f"has too long a chain of $ref links (from {start})",
                    self.max_ref_chain,
                    "DUKAT_GRAMMAR_MAX_REF_CHAIN",
                )

    def _size(self, what: str, chars: int) -> None:
        if chars > self.max_chars:
            raise InvalidRequestError(
                f"the {what} has {chars} characters; at most {self.max_chars} are accepted for "
                "constrained decoding (DUKAT_GRAMMAR_MAX_CHARS)",
                param="response_format",
            )

    def _count(self, what: str, count: int, limit: int, setting: str) -> None:
        if count > limit:
            raise InvalidRequestError(
                f"the {what} list has {count} values; at most {limit} are accepted for constrained "
                f"decoding ({setting})",
                param="response_format",
            )

    @staticmethod
    def _refuse(what: str, limit: int, setting: str) -> None:
        raise InvalidRequestError(
            f"the JSON schema {what}; at most {limit} are accepted for constrained decoding ({setting})",
            param="response_format",
        )


def _endless(root: dict[str, Any]) -> str | None:
    """Where the schema requires itself (a required property, a non-empty array, every branch of an
    anyOf leading back): no finite output exists, and xgrammar's forced string from such a state is
    endless (the worker took gigabytes in seconds). A least fixed point of "has a finite instance"."""
    nodes: dict[int, tuple[dict[str, Any], str]] = {}
    stack: list[tuple[Any, str]] = [(root, "#")]
    while stack:
        node, where = stack.pop()
        if not isinstance(node, dict) or id(node) in nodes:
            continue
        nodes[id(node)] = (node, where)
        for child, at in _parts(root, node, where):
            stack.append((child, at))
    finite: dict[int, bool] = dict.fromkeys(nodes, False)
    changed = True
    while changed:
        changed = False
        for key, (node, _) in nodes.items():
            if not finite[key] and _finite_given(root, node, finite):
                finite[key] = changed = True
    return next((where for key, (_, where) in nodes.items() if not finite[key]), None)


def _parts(root: dict[str, Any], node: dict[str, Any], where: str) -> Iterator[tuple[Any, str]]:
    """A schema's subschemas with where they are ($ref targets included, not the $defs themselves)."""
    ref = node.get("$ref")
    if isinstance(ref, str):
        yield _resolve(root, ref), ref
    for key in ("properties", "patternProperties"):
        values = node.get(key)
        if isinstance(values, dict):
            yield from ((sub, f"{where}/{key}/{name}") for name, sub in values.items())
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
        if isinstance(node.get(key), dict):
            yield node[key], f"{where}/{key}"
    for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
        values = node.get(key)
        if isinstance(values, list):
            yield from ((sub, f"{where}/{key}/{i}") for i, sub in enumerate(values))


def _finite_given(root: dict[str, Any], node: dict[str, Any], finite: dict[int, bool]) -> bool:
    def ok(sub: Any) -> bool:
        return not isinstance(sub, dict) or finite.get(id(sub), True)

    ref = node.get("$ref")
    if isinstance(ref, str) and not ok(_resolve(root, ref)):
        return False
    for key, combine in (("allOf", all), ("anyOf", any), ("oneOf", any)):
        values = node.get(key)
        if isinstance(values, list) and values and not combine(ok(v) for v in values):
            return False
    types = node.get("type")
    kinds = set(types) if isinstance(types, list) else {types}
    if kinds - {"object", "array", None}:
        return True  # a string, a number... is a way out
    properties = node.get("properties")
    if isinstance(properties, dict) and "array" not in kinds:
        required = node.get("required")
        if isinstance(required, list) and not all(ok(properties.get(name)) for name in required):
            return False
    min_items = node.get("minItems", 0)
    if isinstance(min_items, int) and min_items > 0 and "object" not in kinds:
        prefix = node.get("prefixItems")
        firsts = prefix[:min_items] if isinstance(prefix, list) else []
        rest = [node.get("items")] if not isinstance(prefix, list) or len(prefix) < min_items else []
        if not all(ok(sub) for sub in [*firsts, *rest]):
            return False
    return True


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """A local JSON pointer's target (None for what this check can't follow)."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _forced_repeats(regex: str) -> int:
    """The largest product of nested repeats' minimum counts (0 for what Python's parser can't read:
    xgrammar judges that)."""
    try:
        parsed = _regex_parser.parse(regex)
    except (re.error, RecursionError, OverflowError):
        return 0
    largest = 0
    stack: list[tuple[Any, int]] = [(parsed, 1)]
    while stack:
        items, factor = stack.pop()
        largest = max(largest, factor)
        for op, arg in items:
            if op in _REPEATS:
                low, _, sub = arg
                stack.append((sub, factor * max(int(low), 1)))
            elif op is _constants.SUBPATTERN:
                stack.append((arg[-1], factor))
            elif op is _constants.BRANCH:
                stack.extend((branch, factor) for branch in arg[1])
    return largest


def _decode(schema: str) -> Any:
    try:
        return msgspec.json.decode(schema)
    except msgspec.DecodeError as exc:
        message = f"the JSON schema is not valid JSON: {exc}"
        raise InvalidRequestError(message, param="response_format") from exc


def _walk(node: Any, depth: int) -> Iterator[tuple[dict[str, Any], int]]:
    """Every subschema (a dict) with its nesting depth, iteratively (no recursion limit to hit)."""
    stack = [(node, depth)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            yield value, level
            for key, child in value.items():
                if key in _KEYWORDS_OF_SUBSCHEMAS and isinstance(child, dict):
                    stack.extend((sub, level + 1) for sub in child.values())
                elif key not in ("enum", "const", "default", "examples"):
                    stack.append((child, level + 1))
        elif isinstance(value, list):
            stack.extend((item, level + 1) for item in value)
