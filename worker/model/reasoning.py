"""Thinking blocks: a reasoning template's `<think>…</think>` (Qwen 3, QwQ, DeepSeek-R1 distills,
SmolLM3) split from the answer, streamed or whole.

Detected from the chat template, no flag: a template that writes `<think>` makes its model's chat
replies parsed. A block counts only at the start of the reply; when the prompt itself ends inside
an open block (R1 distills' generation prompt ends with `<think>\\n`), the reply starts in it. What
comes after `</think>` is the answer (tool calls in it are parsed as usual); a block never closed
(cut by max_tokens) is all reasoning. The split holds back a tail that could still begin a marker,
so it is the same for any split of the same text. gpt-oss's harmony channels are not split yet.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def thinks(template: str | None) -> bool:
    """Whether a chat template opens thinking blocks."""
    return bool(template) and OPEN in str(template)


def opens_thinking(prompt: str) -> bool:
    """Whether `prompt` ends inside a thinking block (its last `<think>` not closed)."""
    return prompt.rfind(OPEN) > prompt.rfind(CLOSE)


class ThinkSplitter:
    """Feeds reply text, returns (thinking, answer) pieces; `reasoning` and `content` hold the whole."""

    def __init__(self, *, inside: bool) -> None:
        self._state = "opening" if inside else "start"
        self._held = ""
        self.reasoning: str | None = "" if inside else None
        self.content = ""

    @property
    def thinking(self) -> bool:
        """Whether the text fed so far ends inside the block (its tokens are reasoning tokens)."""
        return self._state in ("opening", "inside") or (self._state == "start" and bool(self._held))

    def feed(self, text: str) -> tuple[str, str]:
        self._held += text
        thought, answer = "", ""
        if self._state == "start":
            stripped = self._held.lstrip()
            if stripped.startswith(OPEN):
                self._state, self._held, self.reasoning = "opening", stripped[len(OPEN) :], ""
            elif OPEN.startswith(stripped):
                return "", ""  # could still become the opener
            else:
                self._state = "after"
        if self._state == "opening":  # the whitespace after the opener is not thinking
            self._held = self._held.lstrip()
            self._state = "inside" if self._held else "opening"
        if self._state == "inside":
            end = self._held.find(CLOSE)
            if end >= 0:
                thought, self._held = self._held[:end], self._held[end + len(CLOSE) :]
                self._state = "gap"
            else:
                cut = len(self._held) - _partial_suffix(self._held, CLOSE)
                thought, self._held = self._held[:cut], self._held[cut:]
        if self._state == "gap":  # the whitespace between the block and the answer is neither
            self._held = self._held.lstrip()
            self._state = "after" if self._held else "gap"
        if self._state == "after":
            answer, self._held = self._held, ""
        return self._add(thought, answer)

    def finish(self) -> tuple[str, str]:
        """What was held back: an unclosed block's tail is thinking, an unopened marker answer."""
        held, self._held = self._held, ""
        if self._state in ("opening", "inside"):
            return self._add(held, "")
        return self._add("", held)

    def _add(self, thought: str, answer: str) -> tuple[str, str]:
        if thought:
            self.reasoning = (self.reasoning or "") + thought
        self.content += answer
        return thought, answer


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
