"""Response cleaning, one rule for streamed and whole replies.

`StopScanner` is the only implementation: `clean_response` feeds it the whole text at once, a stream
feeds it deltas, and the concatenation of what it emits is the same for any split of the same text.
What it computes from a full text T:

1. leading role echo: drop the longest echo (e.g. "Assistant:", "<|assistant|>") that starts
   T.lstrip() (T itself when `strip` is off);
2. scan left to right: at the first stop string, cut (and set `stopped`); a special token that is
   not a stop (e.g. `</s>` for GPT-2, `<s>` anywhere) is deleted; a stop wins over a deletion at the
   same position; a deletion never creates a stop (the scan has moved past it);
3. with `strip` on (chat), the result is `.strip()`ped: leading whitespace is dropped and trailing
   whitespace is held back until more text follows it, so it never reaches the client.

While streaming, the scanner holds back any tail that could still begin a stop string or a special
token (or an echo, at the start) and emits it once it is decided, so nothing emitted is ever retracted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from shared.model_types import ModelType, PromptFormat
from worker.model.prompts import implied_stops

# Special tokens deleted from a reply when they are not stop strings for the model.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<s>",
    "</s>",
    "<|endoftext|>",
    "<bos>",
    "<eos>",
    "<pad>",
    "<start_of_turn>",
    "<end_of_turn>",
)

# Role openers a model may repeat at the very start of its reply.
_COMMON_ECHOES = ("Assistant:", "<|assistant|>")
_FORMAT_ECHOES: dict[PromptFormat, tuple[str, ...]] = {
    PromptFormat.INST: ("[/INST]",),
    PromptFormat.ZEPHYR: (),
    PromptFormat.GEMMA: ("<start_of_turn>model\n", "model\n"),
    PromptFormat.PLAIN: (),
    PromptFormat.TEMPLATE: (),
}


def role_echoes(fmt: PromptFormat) -> tuple[str, ...]:
    """Role openers removed from the start of a chat reply in `fmt` (none for a chat template's
    models: its generation prompt opened the turn, and "Assistant:" may be their text)."""
    if fmt is PromptFormat.TEMPLATE:
        return ()
    return _COMMON_ECHOES + _FORMAT_ECHOES[fmt]


def stop_strings(model_type: ModelType, stop: Iterable[str] | None = None, *, chat: bool = True) -> list[str]:
    """Request stops, then the format's implied stops and the type's chat stops (chat only), then the
    model's trailing markers; empty strings and repeats dropped."""
    implied = (*implied_stops(model_type.prompt_format), *model_type.chat_stops) if chat else ()
    candidates = [*(stop or ()), *implied, *model_type.trailing_markers]
    return list(dict.fromkeys(s for s in candidates if s))


def scanner_for(
    model_type: ModelType, stop: Iterable[str] | None = None, *, chat: bool = True
) -> StopScanner:
    """The scanner for one reply. `chat=False` (raw text completions): no implied stops, no role
    echo removal, whitespace kept as generated."""
    echoes = role_echoes(model_type.prompt_format) if chat else ()
    return StopScanner(stop_strings(model_type, stop, chat=chat), echoes=echoes, strip=chat)


def clean_response(text: str, model_type: ModelType, stop: list[str] | None = None) -> str:
    """A whole chat reply cleaned: exactly what a stream of the same text emits."""
    scanner = scanner_for(model_type, stop)
    return scanner.feed(text) + scanner.finish()


class StopScanner:
    """Cuts a reply at its first stop string and cleans it, fed whole or in deltas.

    `feed(delta)` returns the text safe to emit now, `finish()` what was held back at the end.
    After a stop, `stopped` is True and further deltas are ignored (the caller may stop generating).
    """

    def __init__(
        self,
        stops: Iterable[str],
        *,
        removals: Iterable[str] = SPECIAL_TOKENS,
        echoes: Iterable[str] = (),
        strip: bool = True,
    ) -> None:
        self._stops = tuple(dict.fromkeys(s for s in stops if s))
        # Longest first, so the longest token at a position is the one deleted.
        self._removals = tuple(
            sorted({r for r in removals if r and r not in self._stops}, key=len, reverse=True)
        )
        self._echoes = tuple(sorted({e for e in echoes if e}, key=len, reverse=True))
        patterns = self._stops + self._removals
        self._patterns = patterns
        firsts = "".join(sorted({p[0] for p in patterns}))
        self._candidate = re.compile(f"[{re.escape(firsts)}]") if firsts else None
        self._strip = strip
        self._lead: str | None = "" if self._echoes else None  # text seen while the echo is undecided
        self._pending = ""  # scanned text held back: it may begin a pattern
        self._spaces = ""  # trailing whitespace held back (strip only)
        self._started = not strip  # strip: True once non-whitespace has been emitted
        self._emitted: list[str] = []
        self._finished = False
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._emitted)

    def feed(self, delta: str) -> str:
        if self._finished:
            raise RuntimeError("StopScanner.feed after finish")
        if self.stopped or not delta:
            return ""
        if self._lead is not None:
            self._lead += delta
            body = self._resolve_echo(final=False)
            if body is None:
                return ""
            delta = body
        return self._scan(delta, final=False)

    def finish(self) -> str:
        if self._finished:
            return ""
        self._finished = True
        if self.stopped:
            return ""
        body = ""
        if self._lead is not None:
            body = self._resolve_echo(final=True) or ""
        return self._scan(body, final=True)

    def _resolve_echo(self, *, final: bool) -> str | None:
        """The text after the role echo, or None while more text could still make an echo."""
        assert self._lead is not None
        head = self._lead.lstrip() if self._strip else self._lead
        if not final and (not head or any(len(head) < len(e) and e.startswith(head) for e in self._echoes)):
            return None
        self._lead = None
        echo = next((e for e in self._echoes if head.startswith(e)), "")
        return head[len(echo) :]

    def _scan(self, delta: str, *, final: bool) -> str:
        text = self._pending + delta
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            match = self._candidate.search(text, i) if self._candidate else None
            j = match.start() if match else n
            out.append(text[i:j])
            i = j
            if i == n:
                break
            if not final and self._could_grow(text, i):
                break  # undecided: hold text[i:] back
            if any(text.startswith(s, i) for s in self._stops):
                self.stopped = True
                i = n
                break
            removal = next((r for r in self._removals if text.startswith(r, i)), None)
            if removal is None:
                out.append(text[i])
            i += len(removal) if removal else 1
        self._pending = text[i:]
        return self._emit("".join(out), final=final or self.stopped)

    def _could_grow(self, text: str, i: int) -> bool:
        """Whether text[i:] is a proper prefix of a pattern, so more text decides what it is."""
        rest = len(text) - i
        return any(rest < len(p) and text.startswith(p[:rest], i) for p in self._patterns)

    def _emit(self, chunk: str, *, final: bool) -> str:
        if self._strip:
            chunk = self._hold_spaces(chunk, final=final)
        if chunk:
            self._emitted.append(chunk)
        return chunk

    def _hold_spaces(self, chunk: str, *, final: bool) -> str:
        if not self._started:
            chunk = chunk.lstrip()
            self._started = bool(chunk)
        body = chunk.rstrip()
        if body:
            chunk, self._spaces = self._spaces + body, chunk[len(body) :]
        else:
            chunk, self._spaces = "", self._spaces + chunk
        if final:
            self._spaces = ""
        return chunk
