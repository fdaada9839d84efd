"""Validate JSON instances against OpenAI's own schemas (`/work/shared/openai/openapi.yaml`).

The file is OpenAPI 3.1 (JSON Schema 2020-12) but still marks some fields with 3.0's
`nullable: true` (the chat stream chunk's `finish_reason`, `usage`, `logprobs`); those are rewritten
to `anyOf: [schema, {type: null}]` so real OpenAI-shaped chunks validate. Parsed once per process.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAPI_PATH = Path(os.environ.get("DUKAT_OPENAI_SPEC", "/work/shared/openai/openapi.yaml"))
_URI = "urn:openai:openapi"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _without_nullable(node: Any) -> Any:
    """`node` with OpenAPI 3.0 `nullable: true` turned into a JSON Schema null alternative."""
    if isinstance(node, list):
        return [_without_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _without_nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _registry() -> Registry:
    with OPENAPI_PATH.open("rb") as f:
        document = yaml.load(f, Loader=_Loader)
    resource = Resource.from_contents(_without_nullable(document), default_specification=DRAFT202012)
    return Registry().with_resource(_URI, resource)


@functools.cache
def _validator(schema_name: str) -> Draft202012Validator:
    schemas = _registry().contents(_URI)["components"]["schemas"]
    if schema_name not in schemas:
        raise KeyError(f"no schema {schema_name!r} in {OPENAPI_PATH}")
    ref = {"$ref": f"{_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(ref, registry=_registry())


def errors(instance: Any, schema_name: str) -> list[str]:
    """Every violation of `#/components/schemas/<schema_name>`, as "path: message" lines."""
    found = _validator(schema_name).iter_errors(instance)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def validate(instance: Any, schema_name: str) -> None:
    """Raise AssertionError listing every violation of OpenAI's schema `schema_name`."""
    problems = errors(instance, schema_name)
    if problems:
        raise AssertionError(f"not a valid {schema_name}:\n" + "\n".join(problems))
