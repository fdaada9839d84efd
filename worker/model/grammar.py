"""Constrained decoding: JSON schemas, regexes and choices applied as a token mask per batch row.

The grammar engine is xgrammar (0.2.8). Measured on this machine's CPU (tinyllama's 768-token test
tokenizer, a schema with a string, an integer, an enum, booleans and an array of objects, 78
tokens of output): xgrammar compiled it in 5 ms and filled + applied a mask in 0.02 ms per token;
llguidance 1.9.1 compiled in 0.8 ms but its mask fill took ~470 ms per token with its default
settings (bench command in the README). xgrammar also forks a matcher (we plan the shortest ending
on a fork), reports the jump-forward string, and applies a bitmask to chosen rows of a batch's
logits in one call: constrained and free rows share a batch, no Python loop over the vocabulary.

The token budget: a mask alone lets a weak model write a string until `max_tokens` cuts it off
with broken JSON. Each row therefore holds a plan: tokens that lead from its matcher's current state
to a point where the grammar may end, first made by the closing policy (`_Closer`: take the
jump-forward string, else the cheapest closer `} ] " 0 ,` ..., else the first allowed token), and
`need` is its length. It holds `need < remaining` as an invariant (the last token is the end of
sequence): when the budget leaves no choice the plan's tokens are taken, and a sampled token after
which no plan fits is taken back and the plan's next token used instead, so a strict output always
ends complete, with finish reason "stop". A grammar whose `need` at the start can't fit the budget is
a 400 before anything runs.

What the check costs, and why it is sound: the policy's plan is O(need) xgrammar calls (a fork, then
per token a jump-forward string and accept attempts: ~1 ms for a 180-token plan). It used to run at
nearly every token of every row, with a bound on how far one token may raise `need` (the initial
need) that was not sound (an optional property or an anyOf branch may raise it more); free rows
beside 8 constrained rows with such a schema ran at x0.5. Now each row keeps a plan that is proven,
not estimated: a sampled token equal to the plan's next one leaves the rest of the plan (the state
it reaches is the one the plan went through); any other token keeps the old plan only if its bytes
are accepted from the new state on a fork, in one `accept_string` call, and a stop token after them
(~20 us for 180 tokens: more of a string's content or a number's digits leave the plan good); else
plans made of the old one are checked the same way: without its first token (a UTF-8 character
completed by another byte), or after up to 3 policy steps, whole or from where it holds the last
step's token (a string closed, an item begun); only else does the policy plan the whole way anew (on
a random model, 25-string schema: once per output, at its start, against ~400 times in 400 tokens
before; a kept plan ends at most a few tokens later than the policy's would). Nothing is assumed
about how far one token can raise `need`: every plan in use has been taken through the matcher from
the current state (xgrammar reads a token as its bytes, so a string of the same bytes is the same
path; the tests take each plan token by token).

A client's grammar is bounded before it is built (worker/model/grammar_limits.py), compiled first in
a child process with a deadline and a memory cap (worker/model/grammar_probe.py), and kept in an LRU
bounded in bytes (worker/model/grammar_cache.py); refusals are cached too, so a repeated bomb costs
nothing.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import torch
import xgrammar as xg

from shared.errors import InvalidRequestError, OverloadedError
from shared.generation import Constraint
from worker.model.grammar_cache import SizedLru
from worker.model.grammar_limits import GrammarLimits
from worker.model.grammar_probe import GrammarProbe, ProbeFailed, compile_constraint

# Single characters the closing policy tries, cheapest ending first.
_CLOSERS = ('"', "}", "]", "0", ",", "t", "f", "n", "[", "{", "a", "1")
# Off its plan, a row first tries this many policy steps, each followed by the old plan's rest from
# up to _REJOIN_TRIES places, before the policy plans the whole way anew.
_REJOIN_STEPS = 3
_REJOIN_TRIES = 2
_XGRAMMAR_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:\d+: ")
# A refusal's cached size: its message and key are small; what matters is that they are bounded too.
_REFUSAL_BYTES = 1024


class Grammars:
    """One model's grammar machinery: its tokenizer's info, the compile box and cache, the closing
    tables."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        vocab_size: int,
        stop_ids: frozenset[int],
        limits: GrammarLimits | None = None,
    ) -> None:
        self.limits = limits or GrammarLimits()
        self.vocab_size = vocab_size
        self.stop_ids = sorted(stop_ids)
        info = xg.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_ids
        )
        self._compiler = xg.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self._cache: SizedLru[xg.CompiledGrammar | str] = SizedLru(self.limits.cache_bytes)
        self._probe = GrammarProbe(
            info.serialize_json(),
            timeout_s=self.limits.compile_timeout_s,
            memory_bytes=self.limits.compile_memory_bytes,
        )
        self._compiling = threading.Lock()
        self._probe.start()  # the child imports xgrammar for seconds: before any deadline counts
        specials = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
        # Special tokens decode to nothing (or end the turn): never inside a constrained output.
        self.banned = torch.tensor(sorted(i for i in specials - stop_ids if i < vocab_size), dtype=torch.long)
        self.vocab: list[bytes] = list(info.decoded_vocab)  # each id's bytes (logprobs use them too)
        self.closer = _Closer(self.vocab, specials, vocab_size)

    def compile(self, constraint: Constraint) -> xg.CompiledGrammar:
        """The compiled grammar (cached per constraint); a 400 naming what xgrammar can't take, or
        that crashed it or ran past its deadline or memory in the compile box."""
        key = (constraint.kind, constraint.schema, constraint.regex, tuple(constraint.choices or ()))
        cached = self._cache.get(key)
        if cached is None:
            # One compile at a time, so requests that bring the same new grammar compile it once;
            # the one before may be a bomb that runs to the deadline.
            if not self._compiling.acquire(timeout=2 * self.limits.compile_timeout_s):
                raise OverloadedError("the grammar compiler is busy with other requests; retry later")
            try:
                cached = self._cache.get(key)
                if cached is None:
                    cached = self._compile_boxed(constraint, key)
            finally:
                self._compiling.release()
        if isinstance(cached, str):
            raise InvalidRequestError(
                f"the {_what(constraint)} can't be used for constrained decoding: {cached}",
                param=constraint.param,
            )
        return cached

    def close(self) -> None:
        self._probe.close()

    def _compile_boxed(self, constraint: Constraint, key: tuple[Any, ...]) -> xg.CompiledGrammar | str:
        try:
            if constraint.schema is not None or constraint.kind != "json":  # not the built-in any-object
                self._probe.check(constraint, _what(constraint))
            compiled = compile_constraint(self._compiler, *key)
        except (ProbeFailed, RuntimeError, ValueError, xg.InvalidJSONError) as exc:
            refusal = _XGRAMMAR_PREFIX.sub("", str(exc).strip())
            self._cache.put(key, refusal, _REFUSAL_BYTES)
            return refusal
        self._cache.put(key, compiled, int(compiled.memory_size_bytes))
        return compiled

    def row(self, constraint: Constraint, budget: int) -> RowGrammar:
        """A row's matcher; a 400 when the shortest output the grammar allows can't fit `budget`.
        A non-strict JSON schema the engine can't compile falls back to any JSON object; one past
        the limits is a 400 either way."""
        self.limits.check(constraint)
        self.limits.check_budget(constraint, budget, self.closer.longest)
        try:
            compiled = self.compile(constraint)
        except InvalidRequestError:
            if constraint.strict or constraint.kind != "json":
                raise
            compiled = self.compile(Constraint(kind="json"))  # best effort: any JSON object
        row = RowGrammar(self, compiled, limit=budget)
        if row.need + 1 > budget:
            raise InvalidRequestError(
                f"the shortest output the {_what(constraint)} allows needs {row.need + 1} tokens "
                "(its end of sequence included), "
                f"but at most {budget} may be generated; raise max_tokens",
                param="max_tokens",
            )
        return row

    def bitmask(self, batch: int, rows: list[tuple[int, RowGrammar]]) -> torch.Tensor:
        """What each constrained row `i` of a `batch`-row step allows next. Reads only the rows'
        states, not the step's logits: the scheduler fills it in a thread during the forward
        (xgrammar releases the GIL), as vLLM overlaps it."""
        bitmask = xg.allocate_token_bitmask(batch, self.vocab_size)
        for i, row in rows:
            row.matcher.fill_next_token_bitmask(bitmask, i)
        return bitmask

    def mask(
        self, logits: torch.Tensor, rows: list[tuple[int, RowGrammar]], bitmask: torch.Tensor | None = None
    ) -> None:
        """Mask, in place, each constrained row `i` of `logits` [batch, vocab] to what its grammar
        allows (`bitmask`: filled ahead by `bitmask`)."""
        if bitmask is None:
            bitmask = self.bitmask(logits.shape[0], rows)
        indices = [i for i, _ in rows]
        width = min(logits.shape[-1], self.vocab_size)
        xg.apply_token_bitmask_inplace(logits[:, :width], bitmask.to(logits.device), indices=indices)
        if logits.shape[-1] > width:
            logits[indices, width:] = float("-inf")
        index = torch.tensor(indices, dtype=torch.long, device=logits.device)
        if len(self.banned):
            logits[index[:, None], self.banned.to(logits.device)[None, :]] = float("-inf")
        dead = index[torch.isneginf(logits[index]).all(dim=-1)]
        if len(dead):  # the model gave every allowed token -inf: choose uniformly among them
            logits[dead] = 0.0
            allowed = bitmask.to(logits.device)
            xg.apply_token_bitmask_inplace(logits[:, :width], allowed, indices=dead.tolist())
            logits[dead, width:] = float("-inf")


class RowGrammar:
    """One request's grammar state: what it allows next, and a way to end from there (its plan)."""

    def __init__(self, grammars: Grammars, compiled: xg.CompiledGrammar, *, limit: int) -> None:
        self._grammars = grammars
        self.matcher = xg.GrammarMatcher(compiled)
        # Counted up to the budget only: past it the request is refused anyway.
        plan = grammars.closer.plan(self.matcher, limit=limit)
        self._plan = plan if plan is not None else []
        self.need = len(plan) if plan is not None else limit + 1
        self.plans = 1  # the closing policy's plans taken up (the tests read it)

    @property
    def ended(self) -> bool:
        return bool(self.matcher.is_terminated())

    @property
    def plan(self) -> list[int]:
        """The tokens that end the output from the current state (a stop token follows them)."""
        return list(self._plan)

    def forced(self, remaining: int) -> int | None:
        """The plan's token when the budget leaves no choice, else None. The last token of the
        budget is kept for the end of sequence (a finish reason "stop")."""
        if self.need < remaining - 1:
            return None
        return self._next()

    def accept(self, token: int, remaining: int) -> int:
        """Take `token` (sampled from the masked logits) unless it leaves too little budget to end;
        then the plan's token instead. Returns the token taken."""
        if not self.matcher.accept_token(token):  # only when every allowed token had -inf logits
            token = self._next()
            self.matcher.accept_token(token)
        if self.ended:
            return token
        previous = self._plan
        if previous and token == previous[0]:  # the plan's own step: the rest still ends it
            self._plan = previous[1:]
            self.need = len(self._plan)
            return token
        # Off the plan: the same tokens often still end the output (more of a string's content,
        # a number's digits); checked on a fork in one call. Else the closing policy plans anew.
        if len(previous) <= remaining - 2 and self._grammars.closer.ends(self.matcher, previous):
            self.need = len(previous)
            return token
        rejoined = self._grammars.closer.rejoin(self.matcher, previous, limit=remaining - 2)
        if rejoined is not None:
            self._plan, self.need = rejoined, len(rejoined)
            return token
        plan = self._grammars.closer.plan(self.matcher, limit=remaining - 2)
        if plan is not None:
            self._plan, self.need = plan, len(plan)
            self.plans += 1
            return token
        return self._close_instead(previous)

    def _close_instead(self, previous: list[int]) -> int:
        """The sampled token is undone and the previous plan's first token taken: the rest of that
        plan ends the output, one token shorter than before."""
        self.matcher.rollback(1)
        closing = previous[0] if previous else self._grammars.closer.next(self.matcher)
        self.matcher.accept_token(closing)
        self._plan = previous[1:]
        self.need = len(self._plan)
        return closing

    def take(self, token: int) -> None:
        """Record a forced token (the plan's, from `forced`)."""
        self.matcher.accept_token(token)
        if self._plan and token == self._plan[0]:
            self._plan = self._plan[1:]
            self.need = len(self._plan)

    def _next(self) -> int:
        """The plan's next token; a stop token once the plan is done (the grammar may end)."""
        return self._plan[0] if self._plan else self._grammars.closer.next(self.matcher)


class _Closer:
    """The closing policy: from a matcher state, the next token of a short way to an end."""

    def __init__(self, vocab: list[bytes], specials: set[int], vocab_size: int) -> None:
        self._by_bytes: dict[bytes, int] = {}
        for i, text in enumerate(vocab[:vocab_size]):
            if text and i not in specials:
                self._by_bytes.setdefault(text, i)
        self.longest = max((len(b) for b in self._by_bytes), default=1)
        self._closers = [self._by_bytes[c.encode()] for c in _CLOSERS if c.encode() in self._by_bytes]
        blank = [not text.strip() or i in specials for i, text in enumerate(vocab[:vocab_size])]
        blank += [True] * (vocab_size - len(blank))
        self._preferred = ~torch.tensor(blank, dtype=torch.bool)
        self._vocab_size = vocab_size
        self._vocab = vocab
        self._empty = {i for i, text in enumerate(vocab[:vocab_size]) if not text}

    def next(self, matcher: xg.GrammarMatcher) -> int:
        """The policy's token for `matcher`'s state (a stop token when the grammar may end there)."""
        return self._step(matcher.fork(), _stops(matcher))

    def need(self, matcher: xg.GrammarMatcher, *, limit: int) -> int:
        """Tokens the policy takes from `matcher`'s state until the grammar may end (over `limit`:
        limit + 1)."""
        plan = self.plan(matcher, limit=limit)
        return len(plan) if plan is not None else limit + 1

    def plan(self, matcher: xg.GrammarMatcher, *, limit: int) -> list[int] | None:
        """The policy's tokens from `matcher`'s state to where the grammar may end (None when they
        are more than `limit`)."""
        sim = matcher.fork()
        stops = _stops(matcher)
        plan: list[int] = []
        for _ in range(limit + 1):
            token = self._step(sim, stops)
            if token in stops:
                return plan
            plan.append(token)
        return None

    def rejoin(self, matcher: xg.GrammarMatcher, previous: list[int], *, limit: int) -> list[int] | None:
        """A plan made of `previous` (the plan before the last token): its rest after its first
        token (the model's token did that token's work), else a few policy steps from `matcher`'s
        state followed by `previous`, or by its rest after the first places that hold the last
        step's token. None when none of those ends the output within `limit`."""
        if len(previous) > 1 and self.ends(matcher, previous[1:]):
            return previous[1:]  # e.g. a UTF-8 character completed by another byte
        sim = matcher.fork()
        stops = _stops(matcher)
        bridge: list[int] = []
        for _ in range(_REJOIN_STEPS):
            token = self._step(sim, stops)
            if token in stops:
                return bridge
            bridge.append(token)
            if len(bridge) + len(previous) <= limit and self.ends(matcher, bridge + previous):
                return bridge + previous  # e.g. a UTF-8 character completed, then the old way
            tries = 0
            for j, held in enumerate(previous):  # a string closed, an item begun: the old way on
                if held != token:
                    continue
                plan = bridge + previous[j + 1 :]
                if len(plan) <= limit and self.ends(matcher, plan):
                    return plan
                tries += 1
                if tries == _REJOIN_TRIES:
                    break
        return None

    def ends(self, matcher: xg.GrammarMatcher, plan: list[int]) -> bool:
        """Whether `plan` leads from `matcher`'s state to where the grammar may end: its bytes
        accepted on a fork in one call (xgrammar takes a token byte by byte, as a string), then a
        stop token."""
        if not self._empty.isdisjoint(plan):  # a token with no bytes: not comparable to a string
            return False
        sim = matcher.fork()
        text = b"".join(map(self._vocab.__getitem__, plan))
        return bool(sim.accept_string(text)) and any(sim.accept_token(stop) for stop in _stops(matcher))

    def _step(self, matcher: xg.GrammarMatcher, stops: tuple[int, ...]) -> int:
        """Advance `matcher` (a fork) by the policy's token and return it."""
        for stop in stops:
            if matcher.accept_token(stop):
                return stop
        ahead = _jump_forward(matcher)
        for n in range(min(len(ahead), self.longest), 0, -1):
            token = self._by_bytes.get(ahead[:n])
            if token is not None and matcher.accept_token(token):
                return token
        for token in self._closers:
            if matcher.accept_token(token):
                return token
        token = self._first_allowed(matcher)
        matcher.accept_token(token)
        return token

    def _first_allowed(self, matcher: xg.GrammarMatcher) -> int:
        bitmask = xg.allocate_token_bitmask(1, self._vocab_size)
        matcher.fill_next_token_bitmask(bitmask)
        bits = (bitmask[0, :, None] >> torch.arange(32, dtype=torch.int32)) & 1
        allowed = bits.flatten()[: self._vocab_size].bool()
        good = allowed & self._preferred
        candidates = (good if bool(good.any()) else allowed).nonzero()
        if not len(candidates):
            return int(matcher.stop_token_ids[0])
        return int(candidates[0])


def _stops(matcher: xg.GrammarMatcher) -> tuple[int, ...]:
    """The matcher's stop token ids, read once: each read of xgrammar's property converts its
    container anew (a third of `need`'s time when read at every simulated step)."""
    return tuple(int(t) for t in matcher.stop_token_ids)


def _jump_forward(matcher: xg.GrammarMatcher) -> bytes:
    """The bytes the grammar forces next; none when xgrammar's string stops inside a UTF-8 character
    (it hands it to Python as `str`, which raises): the policy then goes token by token."""
    try:
        return matcher.find_jump_forward_string().encode()
    except UnicodeDecodeError:
        return b""


def _what(constraint: Constraint) -> str:
    return {"json": "JSON schema", "regex": "regex", "choice": "choice list"}[constraint.kind]
