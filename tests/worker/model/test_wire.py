"""The model worker's wire, spoken to a real `python -m worker.model` process: ping, whole and
streamed replies, a cancel in mid-stream, error frames, and frames it must refuse."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from shared.errors import ContextLengthExceededError, RequestTimeoutError, UnsupportedTaskError
from shared.generation import EmbedRequest, GenerateRequest, GenerateResult, SamplingParams
from shared.model_types import get_model_type
from shared.processes import WORKER_READY as READY
from shared.wire import (
    MAX_FRAME,
    Accepted,
    Admit,
    Admitted,
    Cancel,
    Delta,
    Error,
    FromWorker,
    Generate,
    Ping,
    Pong,
    Result,
    encode_frame,
    from_worker_decoder,
    read_frame,
)
from shared.wire_client import WorkerConnection
from worker.model.engine import Engine

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def worker(tiny_model_dir: Callable[[str], Path]) -> Iterator[tuple[str, int]]:
    """A model worker serving the tiny Llama: (its address, its pid); stopped at the end."""
    cmd = [sys.executable, "-m", "worker.model", "--model-id", "tiny", "--path",
           str(tiny_model_dir("llama")), "--model-type", "llama", "--quantization", "none",
           "--device", "cpu", "--threads", "1", "--drain-s", "0",
           "--max-queue", "64"]  # fmt: skip  # a small queue: its count cap is what the admission tests reach
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the handshake is the first line on stdout
        assert line.startswith(READY + " "), f"the worker did not start: {line!r}"
        yield f"127.0.0.1:{int(line.split()[1])}", proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
async def conn(worker: tuple[str, int]) -> AsyncIterator[WorkerConnection]:
    connection = WorkerConnection(worker[0])
    yield connection
    await connection.close()


class _Raw:
    """Frames by hand over one connection, for what the client library never sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, address: str) -> _Raw:
        host, _, port = address.rpartition(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def next(self) -> FromWorker:
        payload = await asyncio.wait_for(read_frame(self.reader), 60)
        assert payload is not None, "the worker closed the connection"
        return from_worker_decoder.decode(payload)

    def close(self) -> None:
        self.writer.close()


def _request(max_new_tokens: int, prompt: str = PROMPT) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, params=SamplingParams(temperature=0, max_new_tokens=max_new_tokens))


async def test_ping_answers_with_the_worker_facts(conn: WorkerConnection, worker: tuple[str, int]) -> None:
    info = await conn.ping()
    assert (info.model_id, info.pid, info.model_type) == ("tiny", worker[1], "llama")
    assert (info.quantization, info.device, info.task) == ("none", "cpu", "chat")
    assert info.memory_bytes > 0 and info.context_length == 512


async def test_generate_and_stream_give_the_in_process_engine_text(
    conn: WorkerConnection, tiny_model_dir: Callable[[str], Path]
) -> None:
    request = _request(24)
    whole = await conn.generate(request)
    items = [item async for item in conn.stream(request)]
    *deltas, last = items
    assert isinstance(last, GenerateResult) and all(isinstance(d, str) for d in deltas)
    assert "".join(str(d) for d in deltas) == last.text == whole.text
    engine = Engine.load(tiny_model_dir("llama"), model_type=get_model_type("llama"), quantization="none")
    try:
        local = engine.generate(request)
    finally:
        engine.close()
    assert (whole.text, whole.finish_reason, whole.completion_tokens) == (
        local.text,
        local.finish_reason,
        local.completion_tokens,
    )


async def test_a_cancel_in_mid_stream_stops_the_generation(worker: tuple[str, int]) -> None:
    raw = await _Raw.open(worker[0])
    try:
        raw.writer.write(encode_frame(Generate(id=7, request=_request(400), stream=True)))
        assert await raw.next() == Accepted(id=7)  # it has the request
        assert isinstance(await raw.next(), Delta)
        raw.writer.write(encode_frame(Cancel(id=7)))
        while isinstance(frame := await raw.next(), Delta):
            assert frame.id == 7
        assert isinstance(frame, Result) and frame.id == 7
        assert frame.result.finish_reason == "cancelled"
        assert 1 <= frame.result.completion_tokens < 400
        # The connection serves on.
        raw.writer.write(encode_frame(Ping(id=8)))
        assert isinstance(await raw.next(), Pong)
    finally:
        raw.close()


async def test_closing_a_client_stream_early_leaves_the_worker_serving(conn: WorkerConnection) -> None:
    stream = conn.stream(_request(400))
    assert isinstance(await anext(stream), str)
    await stream.aclose()  # sends the Cancel frame
    assert (await conn.generate(_request(3))).completion_tokens == 3


async def test_request_errors_come_back_as_error_frames(
    conn: WorkerConnection, worker: tuple[str, int]
) -> None:
    with pytest.raises(ContextLengthExceededError, match="maximum context length is 512") as too_long:
        await conn.generate(_request(4, prompt="word " * 2000))
    assert (too_long.value.status, too_long.value.param) == (400, "prompt")
    with pytest.raises(UnsupportedTaskError) as embed:
        await conn.embed(EmbedRequest(inputs=["hello"]))
    assert embed.value.status == 400
    raw = await _Raw.open(worker[0])  # the frame itself: the request's id, the table's code
    try:
        raw.writer.write(encode_frame(Generate(id=41, request=GenerateRequest(params=SamplingParams()))))
        assert await raw.next() == Accepted(id=41)
        frame = await raw.next()
        assert isinstance(frame, Error)
        assert (frame.id, frame.code, frame.param) == (41, "invalid_request", "messages")
    finally:
        raw.close()


async def test_a_group_is_admitted_whole_or_refused_whole(worker: tuple[str, int]) -> None:
    """A request's generations get their places at once, at most a batch of them (this worker: 16
    running + 64 queued), and keep them; others still get places beside the largest
    group; past the worker's places a group is refused whole with a Retry-After."""
    raw = await _Raw.open(worker[0])
    try:
        raw.writer.write(encode_frame(Admit(id=1, count=100)))  # larger than a batch: waves of 16
        assert await raw.next() == Admitted(id=1, places=16)
        raw.writer.write(encode_frame(Admit(id=2, count=1)))  # another client gets in beside it
        assert await raw.next() == Admitted(id=2, places=1)
        for rid in (3, 4, 5):
            raw.writer.write(encode_frame(Admit(id=rid, count=16)))
            assert await raw.next() == Admitted(id=rid, places=16)
        raw.writer.write(encode_frame(Admit(id=6, count=16)))  # 65 + 16 > 80: none of the 16
        refused = await raw.next()
        assert isinstance(refused, Error) and refused.code == "overloaded" and refused.retry_after
        raw.writer.write(encode_frame(Admit(id=7, count=15)))
        assert await raw.next() == Admitted(id=7, places=15)
        raw.writer.write(encode_frame(Generate(id=8, request=_request(2), ticket=7)))  # one of the 15
        assert await raw.next() == Accepted(id=8)
        assert isinstance(await raw.next(), Result)
        raw.writer.write(encode_frame(Admit(id=9, count=1)))  # the 15 stay with their group
        assert isinstance(await raw.next(), Error)
        for rid in (1, 2, 3, 4, 5, 7):
            raw.writer.write(encode_frame(Cancel(id=rid)))
        for rid in range(10, 15):  # every place is free again: five batches of places
            raw.writer.write(encode_frame(Admit(id=rid, count=16)))
            assert await raw.next() == Admitted(id=rid, places=16)
    finally:
        raw.close()  # a closed connection gives back its places too
    fresh = WorkerConnection(worker[0])
    try:
        assert (await fresh.pong()).load.in_flight == 0
        assert (await fresh.generate(_request(2))).completion_tokens == 2
    finally:
        await fresh.close()


async def test_a_group_whose_generations_come_one_by_one_gives_back_every_place(
    worker: tuple[str, int],
) -> None:
    """The first of a group may end before the next is sent (a loaded gateway): the place it frees
    stays with the group, and once the group's last generation has started, nothing stays held."""
    raw = await _Raw.open(worker[0])
    try:
        raw.writer.write(encode_frame(Admit(id=1, count=2)))
        assert await raw.next() == Admitted(id=1, places=2)
        for rid in (2, 3):
            raw.writer.write(encode_frame(Generate(id=rid, request=_request(2), ticket=1)))
            assert await raw.next() == Accepted(id=rid)
            assert isinstance(await raw.next(), Result)
        raw.writer.write(encode_frame(Cancel(id=1)))  # the gateway's release, after its last one
        for rid in range(4, 9):  # every place of the worker is free: five batches of places
            raw.writer.write(encode_frame(Admit(id=rid, count=16)))
            assert await raw.next() == Admitted(id=rid, places=16)
    finally:
        raw.close()


async def test_deadlines_bound_a_request_whatever_the_worker_does(worker: tuple[str, int]) -> None:
    """A stopped worker answers nothing: the first-token deadline ends a stream, the request deadline
    a whole reply, each a 504; woken up, the worker gets their cancels and serves on."""
    address, pid = worker
    conn = WorkerConnection(address, request_timeout_s=2.0, first_token_timeout_s=1.0)
    try:
        assert (await conn.generate(_request(1))).completion_tokens == 1  # connected, warm
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(RequestTimeoutError) as first_token:
                await anext(conn.stream(_request(50)))
            with pytest.raises(RequestTimeoutError) as whole:
                await conn.generate(_request(50))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert first_token.value.status == whole.value.status == 504
        assert (await conn.generate(_request(2))).completion_tokens == 2
        for _ in range(200):  # the two cancelled rows leave at the scheduler's next steps
            if (load := (await conn.pong()).load).in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert load.in_flight == 0 and load.cancelled >= 2
    finally:
        await conn.close()


async def test_a_frame_over_the_size_limit_drops_only_its_connection(worker: tuple[str, int]) -> None:
    raw = await _Raw.open(worker[0])
    try:
        raw.writer.write((MAX_FRAME + 1).to_bytes(4, "big"))  # a header announcing too large a frame
        assert await asyncio.wait_for(raw.reader.read(), 30) == b""  # closed, nothing read or sent
    finally:
        raw.close()
    garbage = await _Raw.open(worker[0])
    try:
        garbage.writer.write(len(b"\xc1\xc1").to_bytes(4, "big") + b"\xc1\xc1")  # not msgpack
        assert await asyncio.wait_for(garbage.reader.read(), 30) == b""
    finally:
        garbage.close()
    fresh = WorkerConnection(worker[0])
    try:
        assert (await fresh.ping()).model_id == "tiny"
    finally:
        await fresh.close()


async def test_the_reader_refuses_an_oversized_frame_before_reading_it() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data((MAX_FRAME + 1).to_bytes(4, "big") + b"x" * 16)
    with pytest.raises(ConnectionError, match="over the"):
        await read_frame(reader)
    ok = asyncio.StreamReader()
    ok.feed_data(encode_frame(Ping(id=3)))
    ok.feed_eof()
    payload = await read_frame(ok)
    assert payload is not None and msgspec.msgpack.decode(payload)["id"] == 3
    assert await read_frame(ok) is None  # a clean end of stream
