"""gpt-oss's harmony replies: `<|channel|>analysis<|message|>…<|end|>` is thinking,
`<|start|>assistant<|channel|>final<|message|>…` the answer (OpenAI's harmony response format).

The channel markers are special tokens, so a harmony model's reply is decoded with them kept and
parsed here; a reply that never names a channel (text with no markers) is all answer. Same
interface as worker/model/reasoning.py's ThinkSplitter: the split is the same for any split of the
text. Calls on the `commentary` channel (`to=functions.…`) are not parsed yet: their text is answer.
"""

from __future__ import annotations

_MESSAGE, _CHANNEL = "<|message|>", "<|channel|>"
_ENDS = ("<|end|>", "<|return|>", "<|call|>")
_MARKERS = ("<|start|>", _CHANNEL, _MESSAGE, "<|constrain|>", *_ENDS)
_THINKING_CHANNELS = frozenset({"analysis"})


def speaks_harmony(template: str | None) -> bool:
    """Whether a chat template is gpt-oss's harmony format."""
    return bool(template) and _CHANNEL in str(template) and "<|start|>" in str(template)


class HarmonySplitter:
    """Feeds decoded reply text (special tokens kept), returns (thinking, answer) pieces."""

    def __init__(self) -> None:
        self._held = ""
        self._header: str | None = ""  # the header being read; None: inside a message
        self._channel = ""
        self.reasoning: str | None = None
        self.content = ""

    @property
    def thinking(self) -> bool:
        return self._header is None and self._channel in _THINKING_CHANNELS

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
                self._header, self._held = None, self._held[at + len(_MESSAGE) :]
                continue
            at, marker = _first_end(self._held)
            if at < 0:
                cut = len(self._held) - _partial_marker(self._held)
                piece, self._held = self._held[:cut], self._held[cut:]
                (thought if self.thinking else answer).append(piece)
                break
            (thought if self.thinking else answer).append(self._held[:at])
            self._held, self._header = self._held[at + len(marker) :], ""
        return self._add("".join(thought), "".join(answer))

    def finish(self) -> tuple[str, str]:
        """What was held back: a header never closed (no channel named) is answer, markers dropped."""
        held, self._held = self._held, ""
        if self._header is not None:
            held = self._header + held
            self._header = ""
            for marker in _MARKERS:
                held = held.replace(marker, "")
            return self._add("", held)
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
