"""What one request may ask, checked before any work: JSON nesting, model ids, generations (prompts x
n), embedding inputs, characters per prompt, pulls. Each limit is a setting (shared/settings.py);
each refusal a 400 (or 403 for the pull policy) naming the limit and its setting.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

import msgspec
from litestar import Request

from gateway.errors import request_validation_error
from gateway.schemas.common import KeepAlive, keep_alive_seconds
from shared.errors import (
    DukatError,
    InvalidRequestError,
    ModelNotFoundError,
    PullNotAllowedError,
    UnsupportedMediaTypeError,
)
from shared.generation import ToolUse
from shared.keep_alive import parse_keep_alive
from shared.model_config import ModelEntry
from shared.model_ids import check_model_id, is_hub_id
from shared.settings import Settings

# A JSON string (escapes included, unrolled so it never backtracks) or a bracket.
_JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
# Hub revisions: branch, tag or commit names (`refs/pr/1` has slashes).
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}")


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether `body` nests arrays/objects deeper than `limit` (brackets inside strings don't count)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # the usual case, at C speed
    depth = 0
    for token in _JSON_TOKENS.finditer(body):
        first = token.group()[0]
        if first in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif first in _CLOSE:
            depth -= 1
    return False


class LimitedRequest(Request[Any, Any, Any]):
    """litestar's Request, decoding a JSON body as the OpenAPI document says, and no more leniently.

    A body nested deeper than DUKAT_MAX_JSON_DEPTH is a 400 before decoding (msgspec's decoder
    would hit Python's recursion limit, a 500, a few hundred levels down). A body for a typed `data`
    is decoded strictly into its Struct here (litestar's own conversion is lax: `"echo": 0` or
    `"n": "2"` would pass); litestar then takes the Struct as it is.
    """

    async def json(self) -> Any:
        media = self.headers.get("content-type", "")
        if not _is_json(media):
            # Also what keeps a browser's cross-site "simple" POST (text/plain, a form) from an open server.
            said = f"Content-Type was {media!r}" if media else "no Content-Type was sent"
            raise UnsupportedMediaTypeError(f"{said}; send the body as application/json")
        intake = self.app.state["intake"]
        declared = _declared_length(self.headers.get("content-length"))
        with intake.room(declared):  # a large body's bytes are counted before they are read
            body = await self.body()
            with intake.room(len(body) if declared < LARGE_BYTES else 0):  # a chunked one's once read
                return await self._decoded(body)

    async def _decoded(self, body: bytes) -> Any:
        limit = self.app.state["settings"].max_json_depth
        data = self.route_handler.parsed_fn_signature.parameters.get("data")
        if data is None or not body:
            _check_depth(body, limit)
            return await super().json()
        if len(body) < LARGE_BYTES:
            decoded = decode_body(body, data.annotation, limit)
        else:  # read in the intake process first: a refused body never costs this process a decode
            await self.app.state["intake"].check(body, data.annotation)
            decoded = await asyncio.to_thread(decode_body, body, data.annotation, limit)
        return decoded if decoded is not _LENIENT else await super().json()


def _declared_length(header: str | None) -> int:
    return int(header) if header is not None and header.isdigit() else 0


# Bodies this large are read in the intake process first (gateway/intake.py).
LARGE_BYTES = 256 * 1024
_LENIENT = object()  # typed decoding stopped at a bad field before the bad JSON: litestar's own says


def _check_depth(body: bytes, limit: int) -> None:
    if json_depth_exceeds(body, limit):
        raise InvalidRequestError(
            f"the request body nests JSON arrays/objects more than {limit} levels deep (DUKAT_MAX_JSON_DEPTH)"
        )


def decode_body(body: bytes, annotation: Any, depth_limit: int, *, strict_json: bool = False) -> Any:
    """`body` decoded strictly into `annotation` (see LimitedRequest), after its depth check.
    `_LENIENT` when litestar's decoder should say what is wrong, unless `strict_json` (we say it)."""
    _check_depth(body, depth_limit)
    try:
        return msgspec.json.decode(body, type=annotation)
    except msgspec.ValidationError as exc:
        error = exc
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    # JSON Schema counts 2.0 as an integer: take integral numbers where integers are expected.
    try:
        loose = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        if strict_json:
            raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
        return _LENIENT
    try:
        return msgspec.convert(_integral(loose), annotation)
    except msgspec.ValidationError:
        raise request_validation_error(error) from None
    except msgspec.DecodeError as exc:  # the typed decode stopped at a bad value before the bad JSON
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None


def _is_json(media: str) -> bool:
    kind = media.split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _integral(value: Any) -> Any:
    """`value` with every float that is a whole number (within int64) as an int."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


def check_model(manager: Any, model_id: str | None) -> None:
    """A client's model id: a config entry as written, else a name (never a path); None: the default."""
    if model_id is not None:
        allowed = manager.config.view().models
        check_model_id(model_id, max_length=manager.settings.max_model_id_length, allowed=allowed)


def check_generations(settings: Settings, prompts: int, n: int) -> None:
    if prompts * n > settings.max_generations:
        raise InvalidRequestError(
            f"{prompts} prompt(s) x n={n} is {prompts * n} generations; the limit per request is "
            f"{settings.max_generations} (DUKAT_MAX_GENERATIONS)",
            param="n" if prompts == 1 else "prompt",
        )


def keep_alive_for(
    settings: Settings, value: KeepAlive, *, admin: bool, entry: ModelEntry | None = None
) -> KeepAlive:
    """An inference key's `keep_alive`, clamped to its model's range (the config `entry`'s
    keep_alive_floor/_ceiling, else DUKAT_KEEP_ALIVE_FLOOR/_CEILING): its -1 (pin forever) is the
    ceiling, its 0 (unload now) the floor; a ceiling of -1 bounds nothing (pinning allowed). An
    admin's is as sent."""
    seconds = keep_alive_seconds(value)
    if admin or seconds is None:
        return value
    own = entry or ModelEntry()
    floor = parse_keep_alive(_first(own.keep_alive_floor, settings.keep_alive_floor))
    ceiling = parse_keep_alive(_first(own.keep_alive_ceiling, settings.keep_alive_ceiling))
    if seconds < 0:
        return ceiling
    kept = max(seconds, floor)
    return kept if ceiling < 0 else min(kept, ceiling)


def _first(value: str | float | None, default: str) -> str | float:
    return default if value is None else value


def config_entry(manager: Any, model_id: str | None) -> ModelEntry | None:
    """The config file's entry of the model a request names (or of the default model)."""
    try:
        entry: ModelEntry | None = manager.config.view().models.get(manager.resolve_id(model_id))
    except DukatError:  # no model and no default: the request fails on that later
        return None
    return entry


def check_request_work(settings: Settings, sizes: Iterable[int], n: int, param: str) -> None:
    """Prompts x n x prompt length, before any work: n=128 copies of a long prompt are 128 prefills."""
    total = sum(sizes) * n
    if total > settings.max_request_prompt_chars:
        raise InvalidRequestError(
            f"the prompts x n of this request are {total} characters (token ids) to read; the limit per "
            f"request is {settings.max_request_prompt_chars} (DUKAT_MAX_REQUEST_PROMPT_CHARS)",
            param=param,
        )


def check_messages(settings: Settings, count: int, param: str) -> None:
    if count > settings.max_messages:
        raise InvalidRequestError(
            f"`{param}` has {count} entries; the limit per request is {settings.max_messages} "
            "(DUKAT_MAX_MESSAGES)",
            param=param,
        )


def tools_text(tools: ToolUse | None) -> str:
    """The tool definitions as the chat template gets them, for the character bound (9 MB of tool
    descriptions cost 7.5 s of worker CPU to tokenize before their context_length_exceeded)."""
    return msgspec.json.encode(tools.tools).decode() if tools is not None else ""


def check_prompt_chars(settings: Settings, texts: Iterable[str], param: str) -> None:
    """Before tokenizing: a prompt far beyond any context length costs CPU-seconds to tokenize."""
    limit = settings.max_prompt_chars
    size = sum(len(t) for t in texts)
    if size > limit:
        raise InvalidRequestError(
            f"the prompt is {size} characters; the limit is {limit} (DUKAT_MAX_PROMPT_CHARS)", param=param
        )


def check_embedding_inputs(settings: Settings, inputs: list[str] | list[list[int]]) -> None:
    if len(inputs) > settings.max_embedding_inputs:
        raise InvalidRequestError(
            f"{len(inputs)} inputs; the limit per request is {settings.max_embedding_inputs} "
            "(DUKAT_MAX_EMBEDDING_INPUTS)",
            param="input",
        )
    for text in inputs:
        if isinstance(text, str):
            check_prompt_chars(settings, (text,), "input")
        elif len(text) > settings.max_prompt_chars:
            raise InvalidRequestError(
                f"a token-id input has {len(text)} ids; the limit is {settings.max_prompt_chars} "
                "(DUKAT_MAX_PROMPT_CHARS)",
                param="input",
            )


def check_token_count(settings: Settings, ids: list[int], param: str) -> None:
    if len(ids) > settings.max_prompt_chars:
        raise InvalidRequestError(
            f"{len(ids)} token ids; the limit is {settings.max_prompt_chars} (DUKAT_MAX_PROMPT_CHARS)",
            param=param,
        )


def check_pairs(settings: Settings, pairs: list[tuple[str, str]], param: str) -> None:
    """A rerank's documents (or a score's pairs): as many as an embedding request's inputs, each pair
    within the prompt limit."""
    if len(pairs) > settings.max_embedding_inputs:
        raise InvalidRequestError(
            f"{len(pairs)} documents; the limit per request is {settings.max_embedding_inputs} "
            "(DUKAT_MAX_EMBEDDING_INPUTS)",
            param=param,
        )
    for first, second in pairs:
        check_prompt_chars(settings, (first, second), param)


def check_revision(revision: str | None) -> None:
    if revision is not None and (not _REVISION.fullmatch(revision) or ".." in revision):
        raise InvalidRequestError(
            "revision must be a branch, tag or commit name (letters, digits, '.', '_', '-', '/')",
            param="revision",
        )


def check_pull(settings: Settings, model_id: str) -> None:
    """A hub repo id an admin may pull (DUKAT_PULL_ALLOW): `org/name`, matching an allowed pattern."""
    check_model_id(model_id, max_length=settings.max_model_id_length)
    if not is_hub_id(model_id):
        raise InvalidRequestError(
            f"{model_id!r} is not a hub model id like 'org/name' (each part at most 96 characters)",
            param="model",
        )
    if not any(fnmatchcase(model_id, pattern) for pattern in settings.pull_allow):
        allowed = ", ".join(settings.pull_allow) or "none"
        raise PullNotAllowedError(
            f"pulling {model_id!r} is not allowed here (DUKAT_PULL_ALLOW: {allowed})", param="model"
        )


async def check_loadable(manager: Any, model_id: str) -> None:
    """An admin's load: a config entry, a folder under models_dir, or a hub repo the pull policy allows
    (the host downloads what it does not have)."""
    check_model(manager, model_id)
    if model_id in manager.config.view().models:
        return
    if any(m.id == model_id for m in await manager.local_models()):
        return
    if not is_hub_id(model_id):
        raise ModelNotFoundError(
            f"model {model_id!r} is not in the config file, not under models_dir, and not a hub id to pull",
            param="model",
        )
    check_pull(manager.settings, model_id)
