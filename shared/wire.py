"""The gateway ↔ model worker wire: length-prefixed msgpack frames, typed tagged unions.

Every frame carries the request id it belongs to; a failure is an `ErrorFrame` whose `code` maps back
to the same class of the error table. One encoder and one decoder per direction, built once.
"""

from __future__ import annotations

import asyncio
import struct

import msgspec
from msgspec import Struct

from shared.errors import DukatError, error_from_code
from shared.generation import (
    CallDelta,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    SamplingParams,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
)

_HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024


class EngineInfo(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What a loaded model is, as the engine reports it."""

    model_type: str
    task: str
    device: str
    quantization: str
    dtype: str
    memory_bytes: int
    context_length: int
    load_seconds: float
    # Whether concurrent requests share forward passes; when not, why (the cache kind, the task).
    batching: bool = True
    batching_reason: str | None = None


class WorkerInfo(EngineInfo, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The engine's facts plus the worker process's: its model id and pid (a Pong's payload)."""

    model_id: str
    pid: int


# Gateway → worker.
class Hello(Struct, tag="hello", kw_only=True, forbid_unknown_fields=True):
    """A connection's first frame when the worker has an internal token: the token, or the worker
    closes the connection (DUKAT_INTERNAL_TOKEN)."""

    id: int = 0
    token: str


class Generate(Struct, tag="generate", kw_only=True, forbid_unknown_fields=True):
    id: int
    request: GenerateRequest
    defaults: SamplingParams | None = None
    stream: bool = False
    # The id of an Admit on this connection whose place this takes (None: admitted on its own).
    ticket: int | None = None


class Embed(Struct, tag="embed", kw_only=True, forbid_unknown_fields=True):
    id: int
    request: EmbedRequest


class Admit(Struct, tag="admit", kw_only=True, forbid_unknown_fields=True):
    """Admit one request's `count` generations (its n choices, its prompts) together: the answer is
    `Admitted` with the places they hold, or an `overloaded` Error. Each Generate naming this
    frame's id as its `ticket` runs in one of those places. A Cancel of the id gives them back."""

    id: int
    count: int


class Cancel(Struct, tag="cancel", kw_only=True, forbid_unknown_fields=True):
    id: int


class Ping(Struct, tag="ping", kw_only=True, forbid_unknown_fields=True):
    id: int


class Pause(Struct, tag="pause", kw_only=True, forbid_unknown_fields=True):
    """The stream `id`'s reader fell behind (its gateway buffer is full): its row stops generating
    (it leaves the batch) until a Resume; frames already made still come."""

    id: int


class Resume(Struct, tag="resume", kw_only=True, forbid_unknown_fields=True):
    id: int


# Worker → gateway.
class Admitted(Struct, tag="admitted", kw_only=True, forbid_unknown_fields=True):
    id: int
    # Places the group holds until its last generation started: all it asked for, or every place
    # of the worker for a larger group (send at most this many at a time).
    places: int


class Accepted(Struct, tag="accepted", kw_only=True, forbid_unknown_fields=True):
    """The worker has the request: if the connection drops before this, it never got it (and
    another worker may take it); after, it was in flight."""

    id: int


class Delta(Struct, tag="delta", kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    id: int
    text: str = ""
    reasoning: bool = False  # a piece of the thinking block, not of the answer
    logprobs: list[TokenLogprob] | None = None  # of the tokens that made `text` (when asked for)
    call: CallDelta | None = None  # a piece of a tool call instead of text


class Result(Struct, tag="result", kw_only=True, forbid_unknown_fields=True):
    id: int
    result: GenerateResult


class Logprobs(Struct, tag="logprobs", kw_only=True, forbid_unknown_fields=True):
    """A slice of a finished generation's logprobs, sent before its Result, whose lists then start
    empty (`result_frames`): the gateway decodes a long answer's logprobs a slice at a time, between
    its other requests' work, instead of all at once (12 ms for 600 tokens with 20 alternatives)."""

    id: int
    logprobs: list[TokenLogprob]
    prompt: bool = False  # of the echoed prompt (`prompt_logprobs`), not of the output


# Tokens of logprobs a Logprobs frame holds (~25 KB of msgpack with 20 alternatives each).
LOGPROB_SLICE = 64


def result_frames(rid: int, result: GenerateResult) -> list[Logprobs | Result]:
    """The frames that carry a finished generation: long logprobs in slices, then the result."""
    output, prompt = result.logprobs or [], result.prompt_logprobs or []
    if len(output) + len(prompt) <= LOGPROB_SLICE:
        return [Result(id=rid, result=result)]
    frames: list[Logprobs | Result] = [
        Logprobs(id=rid, logprobs=items[i : i + LOGPROB_SLICE], prompt=is_prompt)
        for is_prompt, items in ((True, prompt), (False, output))
        for i in range(0, len(items), LOGPROB_SLICE)
    ]
    emptied = msgspec.structs.replace(
        result,
        logprobs=None if result.logprobs is None else [],
        prompt_logprobs=None if result.prompt_logprobs is None else [],
    )
    return [*frames, Result(id=rid, result=emptied)]


class Embedding(Struct, tag="embedding", kw_only=True, forbid_unknown_fields=True):
    id: int
    result: EmbedResult


class WorkerLoad(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The worker's own counters, as of a Pong (its host's keep-alive and eviction read them)."""

    in_flight: int = 0  # requests accepted and not finished (queued or generating)
    finished: int = 0  # since start, cancelled ones included
    cancelled: int = 0  # since start: the caller went away (disconnect, deadline)
    # Seconds since its last request ended (0 while one is in flight).
    idle_s: float = 0.0
    # The last request's keep_alive in seconds (negative: forever); None when it gave none.
    keep_alive_s: float | None = None
    # The LoRA adapters it has loaded (worker/model/lora.py), least recently used first.
    adapters: list[str] = []


class Pong(Struct, tag="pong", kw_only=True, forbid_unknown_fields=True):
    id: int
    info: WorkerInfo
    load: WorkerLoad = WorkerLoad()


class Error(Struct, tag="error", kw_only=True, forbid_unknown_fields=True):
    id: int
    code: str
    message: str
    param: str | None = None
    retry_after: int | None = None

    @classmethod
    def of(cls, request_id: int, exc: DukatError) -> Error:
        return cls(
            id=request_id, code=exc.code, message=exc.message, param=exc.param, retry_after=exc.retry_after
        )

    def exception(self) -> DukatError:
        return error_from_code(self.code, self.message, self.param, self.retry_after)


# Text <-> token ids (the Messages API's count_tokens, /tokenize, /detokenize): answered at once,
# outside the generation queue.
class Tokenize(Struct, tag="tokenize", kw_only=True, forbid_unknown_fields=True):
    """`request`'s prompt as generation builds it (messages through the chat template, tools too; or
    a raw prompt) as token ids. `add_special_tokens` None: as generation adds them."""

    id: int
    request: GenerateRequest
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None


class Detokenize(Struct, tag="detokenize", kw_only=True, forbid_unknown_fields=True):
    id: int
    tokens: list[int]


class Tokens(Struct, tag="tokens", kw_only=True, forbid_unknown_fields=True):
    id: int
    tokens: list[int]
    max_model_len: int


class Text(Struct, tag="text", kw_only=True, forbid_unknown_fields=True):
    id: int
    text: str


# LoRA adapters (worker/model/lora.py): load one now (a request naming it loads it too) or unload it;
# answered at once with the adapters then loaded.
class AdapterCommand(Struct, tag="adapter", kw_only=True, forbid_unknown_fields=True):
    id: int
    adapter: str
    load: bool = True  # False: unload


class AdaptersLoaded(Struct, tag="adapters", kw_only=True, forbid_unknown_fields=True):
    id: int
    loaded: list[str]
    was_loaded: bool = False  # the command's adapter was loaded before it


# A cross-encoder's relevance scores (rerank, score): queued and batched like embeddings.
class Score(Struct, tag="score", kw_only=True, forbid_unknown_fields=True):
    id: int
    request: ScoreRequest


class Scores(Struct, tag="scores", kw_only=True, forbid_unknown_fields=True):
    id: int
    result: ScoreResult


ToWorker = (
    Hello | Generate | Embed | Admit | Cancel | Ping | Pause | Resume | Tokenize | Detokenize | Score
    | AdapterCommand
)
FromWorker = (
    Admitted
    | Accepted
    | Delta
    | Logprobs
    | Result
    | Embedding
    | Pong
    | Error
    | Tokens
    | Text
    | Scores
    | AdaptersLoaded
)

_encoder = msgspec.msgpack.Encoder()
to_worker_decoder = msgspec.msgpack.Decoder(ToWorker)
from_worker_decoder = msgspec.msgpack.Decoder(FromWorker)


def encode_frame(frame: ToWorker | FromWorker) -> bytes:
    payload = _encoder.encode(frame)
    return _HEADER.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader, max_size: int = MAX_FRAME) -> bytes | None:
    """The next frame's payload, or None at a clean end of stream; a ConnectionError for a frame
    over `max_size` bytes (before reading it)."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ConnectionError("connection closed inside a frame header") from None
        return None
    (size,) = _HEADER.unpack(header)
    if size > max_size:
        raise ConnectionError(f"frame of {size} bytes is over the {max_size} limit")
    return await reader.readexactly(size)
