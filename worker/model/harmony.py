"""gpt-oss's harmony replies: `<|channel|>analysis<|message|>…<|end|>` is thinking,
`<|start|>assistant<|channel|>final<|message|>…` the answer (OpenAI's harmony response format).

The channel markers are special tokens, so a harmony model's reply is decoded with them kept and
parsed here; a reply that never names a channel (text with no markers) is all answer. Same
interface as worker/model/reasoning.py's ThinkSplitter: the split is the same for any split of the
text. A message addressed to a function (`<|start|>assistant<|channel|>commentary
to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>`; the recipient may
also come before the channel) is a tool call, when the request's calls are parsed: neither thinking
nor answer. Its body is the call's JSON arguments; a body that is not JSON is answer text.
"""

from __future__ import annotations

import json
import re

from shared.generation import ToolCall
from worker.model.tool_calls import make_call

_MESSAGE, _CHANNEL = "<|message|>", "<|channel|>"
_ENDS = ("<|end|>", "<|return|>", "<|call|>")
_MARKERS = ("<|start|>", _CHANNEL, _MESSAGE, "<|constrain|>", *_ENDS)
_THINKING_CHANNELS = frozenset({"analysis"})
_RECIPIENT = re.compile(r"\bto=functions\.([^\s<]+)")


def speaks_harmony(template: str | None) -> bool:
    """Whether a chat template is gpt-oss's harmony format."""
    return bool(template) and _CHANNEL in str(template) and "<|start|>" in str(template)


class HarmonySplitter:
    """Feeds decoded reply text (special tokens kept), returns (thinking, answer) pieces."""

    def __init__(self, *, calls: bool = False) -> None:
        self._held = ""
        self._header: str | None = ""  # the header being read; None: inside a message
        self._channel = ""
        self._parse_calls = calls
        self._callee: str | None = None  # the function the current message calls
        self._body = ""  # the current call's arguments so far
        self.reasoning: str | None = None
        self.content = ""
        self.calls: list[ToolCall] = []

    @property
    def thinking(self) -> bool:
        return self._header is None and self._callee is None and self._channel in _THINKING_CHANNELS

    def feed(self, text: str) -> tuple[str, str]:
        self._held += text
        thought: list[str] = []
        answer: list[str] = []
        while self._held:
            if self._header is not None:  # reading a header up to <|message|>
                at = self._held.find(_MESSAGE)
                if at < 0:
                    break
                self._header += self._held[:at]
                self._channel = _channel_of(self._header)
                callee = _RECIPIENT.search(self._header) if self._parse_calls else None
                self._callee = callee.group(1) if callee else None
                self._header, self._held = None, self._held[at + len(_MESSAGE) :]
                continue
            at, marker = _first_end(self._held)
            if at < 0:
                cut = len(self._held) - _partial_marker(self._held)
                piece, self._held = self._held[:cut], self._held[cut:]
                self._route(piece, thought, answer)
                break
            self._route(self._held[:at], thought, answer)
            answer.append(self._end_call())
            self._held, self._header = self._held[at + len(marker) :], ""
        return self._add("".join(thought), "".join(answer))

    def _route(self, piece: str, thought: list[str], answer: list[str]) -> None:
        if self._callee is not None:
            self._body += piece
        else:
            (thought if self.thinking else answer).append(piece)

    def _end_call(self) -> str:
        """The current message's call made (a body that is not JSON is returned as answer text)."""
        callee, body, self._callee, self._body = self._callee, self._body.strip(), None, ""
        if callee is None:
            return ""
        try:
            arguments = json.loads(body or "{}")
        except json.JSONDecodeError:
            return body
        if not isinstance(arguments, dict):
            return body
        self.calls.append(make_call(callee, arguments))
        return ""

    def finish(self) -> tuple[str, str]:
        """What was held back: a header never closed (no channel named) is answer, markers dropped."""
        held, self._held = self._held, ""
        if self._header is not None:
            held = self._header + held
            self._header = ""
            for marker in _MARKERS:
                held = held.replace(marker, "")
            return self._add("", held)
        if self._callee is not None:  # cut inside a call: a call if its arguments are whole
            self._body += held
            return self._add("", self._end_call())
        return self._add(held, "") if self.thinking else self._add("", held)

    def _add(self, thought: str, answer: str) -> tuple[str, str]:
        if thought or (self.thinking and self.reasoning is None):
            self.reasoning = (self.reasoning or "") + thought
        self.content += answer
        return thought, answer


def _channel_of(header: str) -> str:
    """`assistant<|channel|>analysis` -> "analysis" (a header with no channel: "final")."""
    if _CHANNEL not in header:
        return "final"
    name = header.rsplit(_CHANNEL, 1)[1].strip().split()
    return name[0] if name else "final"


def _first_end(text: str) -> tuple[int, str]:
    found = [(text.find(m), m) for m in _ENDS if m in text]
    return min(found) if found else (-1, "")


def _partial_marker(text: str) -> int:
    """The length of the longest end of `text` that begins some marker."""
    for n in range(min(len(text), max(len(m) for m in _MARKERS) - 1), 0, -1):
        if any(m.startswith(text[-n:]) for m in _MARKERS):
            return n
    return 0
