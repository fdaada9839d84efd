"""One `dukat run` conversation: its messages, system prompt and parameters, and Ollama's in-chat
commands (`/show`, `/set parameter NAME VALUE`, `/set system TEXT`, `/clear`, `/?`, `/bye`) and
`\"\"\"` multi-line input. A line starting with `/` is a command, never a prompt sent to the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HELP = """Commands:
  /set parameter NAME VALUE   temperature, top_p, top_k, seed, max_tokens (num_predict), ...
  /set system TEXT            a new system prompt
  /show                       the model, its parameters and the system prompt
  /clear                      forget the conversation so far
  /bye                        leave (Ctrl-D too)
  /?                          this help
Use \"\"\" to begin and end a message of several lines. Ctrl-C stops an answer while it streams."""

# Ollama's parameter names (and the OpenAI API's): the request field each sets, and its type.
_PARAMETERS: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "min_p": ("min_p", float),
    "seed": ("seed", int),
    "max_tokens": ("max_tokens", int),
    "num_predict": ("max_tokens", int),
    "frequency_penalty": ("frequency_penalty", float),
    "presence_penalty": ("presence_penalty", float),
    "repeat_penalty": ("repetition_penalty", float),
    "repetition_penalty": ("repetition_penalty", float),
}
MULTILINE = '"""'


class ChatSession:
    """Owns one conversation: what is sent with each turn, and what the in-chat commands change."""

    def __init__(self, request: dict[str, Any], system: str | None, show: Callable[[], str]) -> None:
        self.request = dict(request)  # model and parameters
        self.system = system
        self.turns: list[dict[str, str]] = []
        self.show = show  # the model's details, as `dukat show` prints them

    def body(self, text: str) -> dict[str, Any]:
        self.turns.append({"role": "user", "content": text})
        system = [{"role": "system", "content": self.system}] if self.system else []
        return {**self.request, "messages": [*system, *self.turns]}

    def answered(self, reply: str) -> None:
        self.turns.append({"role": "assistant", "content": reply})

    def command(self, text: str) -> str | None:
        """Run the command `text`; returns what to print, or None to leave."""
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        if name in ("/bye", "/exit"):
            return None
        if name == "/clear":
            self.turns.clear()
            return "Cleared the conversation."
        if name in ("/?", "/help"):
            return HELP
        if name == "/show":
            return self._show()
        if name == "/set":
            return self._set(rest)
        return f"Unknown command {name!r}: /? lists them."

    def _show(self) -> str:
        parameters = {k: v for k, v in self.request.items() if k not in ("model", "messages")}
        lines = [self.show(), "", "Parameters of this chat:"]
        lines += [f"  {k} {v}" for k, v in parameters.items()] or ["  (the model's defaults)"]
        lines.append(f"System prompt: {self.system}" if self.system else "System prompt: (none)")
        return "\n".join(lines)

    def _set(self, rest: str) -> str:
        what, _, value = rest.partition(" ")
        value = value.strip()
        if what == "system":
            self.system = value or None
            return "Set the system prompt." if value else "Cleared the system prompt."
        if what == "parameter":
            name, _, raw = value.partition(" ")
            if name not in _PARAMETERS or not raw.strip():
                known = ", ".join(sorted(_PARAMETERS))
                return f"Usage: /set parameter NAME VALUE (NAME: {known})"
            field, kind = _PARAMETERS[name]
            try:
                self.request[field] = kind(raw.strip())
            except ValueError:
                return f"{name} wants a number ({kind.__name__}), not {raw.strip()!r}"
            return f"Set parameter {field} to {self.request[field]}."
        return "Usage: /set parameter NAME VALUE, or /set system TEXT"


def read_message(first: str, more: Callable[[], str]) -> str:
    """The message that begins with the line `first`: the lines up to a closing \"\"\" when it opens
    with one (`more` reads the next line), else `first` alone."""
    if not first.lstrip().startswith(MULTILINE):
        return first
    text = first.lstrip()[len(MULTILINE) :]
    lines = []
    while not text.rstrip().endswith(MULTILINE):
        lines.append(text)
        text = more()
    lines.append(text.rstrip()[: -len(MULTILINE)])
    return "\n".join(lines).strip("\n")
