"""What a route declares about itself for the OpenAPI document: the error statuses it can answer, the
chunk type of its event stream, and the body of its errors when it is not OpenAI's, in its decorator's
`opt` (gateway/openapi.py reads them).

Statuses come in groups named for what the handler does, so a route says `JSON_BODY, REACHES_A_MODEL`
rather than a list of numbers; keys add 401 (and 403 on admin routes) and every route can answer 500.
"""

from __future__ import annotations

from typing import Any

# A body decoded as JSON: invalid (400), too large (413), not application/json (415).
JSON_BODY = (400, 413, 415)
# A request a model worker answers: unknown model (404), queue full (429), worker failed (502), not
# loaded or no room (503), timed out (504).
REACHES_A_MODEL = (404, 429, 502, 503, 504)
# What a route that declares nothing is documented with.
UNDECLARED = (400, 404)


def answers(
    *groups: tuple[int, ...] | int, chunks: Any = None, error_body: Any = None
) -> dict[str, Any]:
    """A route's `opt` entries: the error statuses it can answer besides its success (groups or single
    statuses), and with `chunks` the type of each event of its `text/event-stream` answer. With
    `error_body` its errors have that body instead of OpenAI's (Anthropic's Messages API), and its
    stream names its events and ends without `[DONE]`."""
    statuses = sorted({s for g in groups for s in (g if isinstance(g, tuple) else (g,))})
    declared: dict[str, Any] = {"errors": tuple(statuses)}
    if chunks is not None:
        declared["chunks"] = chunks
    if error_body is not None:
        declared["error_body"] = error_body
    return declared


def errors_of(opt: dict[str, Any]) -> tuple[int, ...]:
    return tuple(opt.get("errors", UNDECLARED))


def chunks_of(opt: dict[str, Any]) -> Any:
    return opt.get("chunks")


def error_body_of(opt: dict[str, Any]) -> Any:
    """The body of the route's errors when it is not OpenAI's (None: OpenAI's ErrorBody)."""
    return opt.get("error_body")
