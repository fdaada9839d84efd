"""What the access log line of the request being served says besides its method, path and status:
fields noted on the way (`note(model=..., key=...)`) by code that learns them deep in the request
(the key guard, the manager resolving the model), in the request's own context."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

# The fields of the request being served; set by the middleware for each request.
REQUEST_FIELDS: ContextVar[dict[str, Any] | None] = ContextVar("dukat_request_fields", default=None)


# The W3C trace context of the request's span, for the model worker's span (None: no tracing).
TRACE_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("dukat_trace_context", default=None)


def add_up(**counts: int) -> None:
    """Add `counts` to the current request's fields (a request with n choices counts each)."""
    found = REQUEST_FIELDS.get()
    if found is not None:
        for name, value in counts.items():
            found[name] = (found.get(name) or 0) + value


def note(**fields: Any) -> None:
    """Add `fields` to the current request's log line (nothing outside a request)."""
    found = REQUEST_FIELDS.get()
    if found is not None:
        found.update(fields)
