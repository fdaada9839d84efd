"""Grammars compiled first in a box: a child process that compiles each new client grammar with a
deadline and a memory cap before the model worker compiles it itself.

xgrammar is native code: a hostile schema can crash it (a deep `$ref` chain: SIGSEGV), run for
minutes, or take gigabytes, and a thread can't be stopped. The child (`python -m
worker.model.grammar_probe`) compiles with the same tokenizer and compiler settings; the worker
compiles in process only what the child compiled in time, so a crash, a timeout or an allocation past
the cap costs the child (killed, started again at the next need) and the client gets a 400. The
compiled grammar itself is not sent back: serializing one costs ~30x its compile (2.4 s and 30 MB of
JSON for 300 optional properties), compiling again costs milliseconds.

Frames on the child's stdin/stdout: a 4-byte big-endian length, then msgpack.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import msgspec

from shared.errors import InternalError
from shared.generation import Constraint
from worker.model.json_grammar import json_schema_ebnf, regex_ebnf

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 120.0  # the child imports xgrammar (and torch): seconds on a busy machine


class Setup(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The child's first frame: the tokenizer it compiles for and its memory cap."""

    tokenizer_info: str  # xgrammar's TokenizerInfo.serialize_json()
    memory_bytes: int


class Outcome(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The child's answer to a Constraint: compiled (error None) or what xgrammar said."""

    error: str | None = None
    seconds: float = 0.0


class ProbeFailed(Exception):
    """The grammar engine refused, crashed on, or ran out of time or memory on a grammar."""


class GrammarProbe:
    """Owns the compile child: started at the first need, killed and replaced when a grammar
    crashes it or runs past the deadline. One grammar at a time (callers queue for it)."""

    def __init__(self, tokenizer_info: str, *, timeout_s: float, memory_bytes: int) -> None:
        self._setup = msgspec.msgpack.encode(Setup(tokenizer_info=tokenizer_info, memory_bytes=memory_bytes))
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._decode = msgspec.msgpack.Decoder(Outcome).decode

    def start(self) -> None:
        """Start the child now (it starts at the first check otherwise)."""
        with self._lock:
            self._started()

    def check(self, constraint: Constraint, what: str) -> None:
        """Returns when the child compiled `constraint` in time; ProbeFailed saying why not."""
        with self._lock:
            outcome = self._check(constraint, what)
        if outcome.error is not None:
            raise ProbeFailed(outcome.error)

    def _check(self, constraint: Constraint, what: str) -> Outcome:
        proc = self._started()
        try:
            _write(proc, msgspec.msgpack.encode(constraint))
            return self._decode(_read(proc, time.monotonic() + self._timeout_s))
        except TimeoutError:
            self._kill(proc)
            raise ProbeFailed(
                f"compiling the {what} took longer than {self._timeout_s:g} s "
                "(DUKAT_GRAMMAR_COMPILE_TIMEOUT_S)"
            ) from None
        except EOFError:
            self._kill(proc)
            raise ProbeFailed(f"the grammar engine failed on the {what} ({_how(proc)})") from None

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._kill(self._proc)

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        # In the model worker's process group: whatever stops the worker stops this child too.
        proc = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        try:
            _write(proc, self._setup)
            _read(proc, time.monotonic() + _START_TIMEOUT_S)  # its ready frame
        except (TimeoutError, EOFError) as exc:
            self._kill(proc)
            raise InternalError("the grammar compiler process could not start") from exc
        self._proc = proc
        return proc

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait()
        if self._proc is proc:
            self._proc = None


def _how(proc: subprocess.Popen[bytes]) -> str:
    code = proc.poll()
    if code is not None and code < 0:
        return f"it crashed with {signal.Signals(-code).name}"
    return f"it exited with status {code}"


def _write(proc: subprocess.Popen[bytes], payload: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(len(payload).to_bytes(4, "big") + payload)
        proc.stdin.flush()
    except BrokenPipeError as exc:
        raise EOFError from exc


def _read(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    head = _read_exactly(fd, 4, deadline)
    return _read_exactly(fd, int.from_bytes(head, "big"), deadline)


def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while size:
        left = None if deadline == float("inf") else deadline - time.monotonic()
        if (left is not None and left <= 0) or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# ---- the child


def compile_constraint(
    compiler: Any, kind: str, schema: str | None, regex: str | None, choices: tuple[str, ...]
) -> Any:
    """`compiler`'s grammar for a constraint (the model worker and the compile box both use it)."""
    if kind == "json" and schema is None:  # json_object: any object
        return compiler.compile_grammar(json_schema_ebnf('{"type": "object"}', strict_mode=False))
    if kind == "json" and schema is not None:  # xgrammar's own grammar with JSON-safe bounded strings
        return compiler.compile_grammar(json_schema_ebnf(schema))
    if kind == "regex" and regex is not None:
        return compiler.compile_grammar(regex_ebnf(regex))
    if kind == "choice" and choices:
        return compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c) for c in choices))
    raise ValueError(f"a {kind} constraint needs its {'regex' if kind == 'regex' else 'choices'}")


def _child() -> None:
    import xgrammar as xg

    # No PDEATHSIG: the worker's host stops its whole process group, this child included; and a
    # child whose worker went away reads the end of its stdin and leaves.
    stdin, stdout = sys.stdin.buffer.fileno(), sys.stdout.buffer
    never = float("inf")
    setup = msgspec.msgpack.decode(_frame(stdin, never), type=Setup)
    info = xg.TokenizerInfo.deserialize_json(setup.tokenizer_info)
    compiler = xg.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    # The cap counts from what the child has mapped once ready (torch's libraries included).
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _mapped_bytes()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + setup.memory_bytes, hard))
    _send(stdout, Outcome())
    decode = msgspec.msgpack.Decoder(Constraint).decode
    while True:
        try:
            constraint = decode(_frame(stdin, never))
        except EOFError:
            return
        started = time.perf_counter()
        try:
            choices = tuple(constraint.choices or ())
            compile_constraint(compiler, constraint.kind, constraint.schema, constraint.regex, choices)
            outcome = Outcome(seconds=time.perf_counter() - started)
        except Exception as exc:
            outcome = Outcome(error=_refusal(exc, setup.memory_bytes))
        _send(stdout, outcome)


def _refusal(exc: Exception, memory_bytes: int) -> str:
    """What xgrammar said; an allocation past the cap (MemoryError, C++'s std::bad_alloc) names it."""
    if isinstance(exc, MemoryError) or "bad_alloc" in str(exc):
        return f"compiling it needs more than {memory_bytes} bytes (DUKAT_GRAMMAR_COMPILE_MEMORY_BYTES)"
    return str(exc) or type(exc).__name__


def _frame(fd: int, deadline: float) -> bytes:
    head = _read_exactly(fd, 4, deadline)
    return _read_exactly(fd, int.from_bytes(head, "big"), deadline)


def _send(out: Any, outcome: Outcome) -> None:
    payload = msgspec.msgpack.encode(outcome)
    out.write(len(payload).to_bytes(4, "big") + payload)
    out.flush()


def _mapped_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


if __name__ == "__main__":
    _child()
