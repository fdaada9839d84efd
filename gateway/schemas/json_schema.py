"""How a schema refines the JSON Schema msgspec generates for it, for the OpenAPI document.

A Struct that the document should describe more narrowly than msgspec can (a bound that is a setting,
a value the decoder takes only to refuse with a clear 400) defines the classmethod
`refine_json_schema(schema, settings)`; gateway/openapi.py calls it on the Struct's component. The
refinement sits next to the checks it describes, so the two change together.
"""

from __future__ import annotations

from typing import Any

from gateway.schemas.common import INT64_MAX
from shared.model_ids import MODEL_ID_PATTERN
from shared.settings import Settings

REF = "#/components/schemas/{name}"


def bound(schema: dict[str, Any], field: str, kind: str, **bounds: int | str) -> None:
    """Add `bounds` to the `kind` alternative(s) of a property (a no-op without that property)."""
    found = schema.get("properties", {}).get(field)
    if found is None:
        return
    for alternative in found.get("anyOf", [found]):
        if alternative.get("type") == kind:
            alternative.update(bounds)


def model_id_schema(settings: Settings) -> dict[str, Any]:
    """A model id as any client may send it (shared/model_ids.py; the length limit is a setting)."""
    return {"type": "string", "pattern": MODEL_ID_PATTERN, "maxLength": settings.max_model_id_length}


def text_input(settings: Settings) -> dict[str, Any]:
    """A prompt or an input text, within DUKAT_MAX_PROMPT_CHARS."""
    return {"type": "string", "maxLength": settings.max_prompt_chars}


def token_ids_input(settings: Settings) -> dict[str, Any]:
    """A prompt or an input as token ids: never empty, within DUKAT_MAX_PROMPT_CHARS ids."""
    token = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
    return {"type": "array", "minItems": 1, "maxItems": settings.max_prompt_chars, "items": token}


def names_a_model(schema: dict[str, Any], settings: Settings) -> None:
    """The refinement of a body naming a model in `model` (an id the config file lists is taken as
    written, even a path, but the document describes what any client may send)."""
    bound(schema, "model", "string", maxLength=settings.max_model_id_length)
    bound(schema, "model", "string", pattern=MODEL_ID_PATTERN)
