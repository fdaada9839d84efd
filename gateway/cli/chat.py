"""`dukat run MODEL [PROMPT]`: chat with a model in the terminal, as `ollama run` does.

With a prompt (or text piped on stdin) it prints one streamed answer and exits; otherwise it is a
multi-turn chat: each answer streams as it is generated, the conversation is kept, Ollama's in-chat
commands work (gateway/cli/chat_session.py), `/bye` leaves.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from gateway.cli.chat_session import MULTILINE, ChatSession, read_message
from gateway.cli.client import Api, CliError
from gateway.cli.models import client_parser, pull


def prepare(api: Api, model: str) -> dict[str, Any]:
    """Pull the model when the server does not have it, then load it (both as `ollama run` does)."""
    known = {m["id"] for m in api.call("GET", "/api/models")["data"]}
    if model not in known:
        pull(api, model)
    if sys.stderr.isatty():
        print(f"loading {model} …", end="\r", file=sys.stderr, flush=True)
    state = api.call("POST", "/api/models/load", {"model": model})
    if sys.stderr.isatty():
        print(" " * (len(model) + 10), end="\r", file=sys.stderr, flush=True)
    if state.get("task") == "embedding":
        raise CliError(f"error: {model} is an embedding model; dukat run needs a chat model")
    return state


def answer(api: Api, body: dict[str, Any]) -> str:
    """Stream one reply to stdout; returns its text (what was shown, when Ctrl-C stopped it)."""
    pieces: list[str] = []
    try:
        for piece in api.chat_stream(body):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass  # closing the stream cancels the generation on the server
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces)


def chat(api: Api, args: argparse.Namespace, request: dict[str, Any]) -> None:
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    from gateway.cli.models import show_text

    session = ChatSession(request, args.system, lambda: show_text(api, args.model))
    print("Send a message (/? for help, /bye to leave)", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
            text = read_message(line, lambda: input("... ")).strip()
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:
            print("\nUse /bye or Ctrl-D to leave.", file=sys.stderr)
            continue
        if text.startswith("/") and not line.lstrip().startswith(MULTILINE):
            try:
                said = session.command(text)
            except CliError as exc:  # /show of a server that went away: the chat goes on
                said = exc.message
            if said is None:
                return
            print(said, file=sys.stderr)
            continue
        if text:
            session.answered(answer(api, session.body(text)))


def cmd_run(api: Api, args: argparse.Namespace) -> None:
    piped = "" if sys.stdin.isatty() else sys.stdin.read()
    prompt = "\n\n".join(p for p in (" ".join(args.prompt), piped.strip()) if p)
    prepare(api, args.model)
    request: dict[str, Any] = {"model": args.model}
    if args.temperature is not None:
        request["temperature"] = args.temperature
    if args.max_tokens is not None:
        request["max_tokens"] = args.max_tokens
    if prompt or not sys.stdin.isatty():
        if not prompt:
            raise CliError("error: nothing to send: stdin was empty and no PROMPT was given")
        system = [{"role": "system", "content": args.system}] if args.system else []
        answer(api, {**request, "messages": [*system, {"role": "user", "content": prompt}]})
        return
    chat(api, args, request)


def add_run_command(sub: Any) -> None:
    p = client_parser(sub, "run", "chat with a model (pulls and loads it first); one answer with PROMPT")
    p.add_argument("prompt", nargs="*", help="answer this and exit (text piped on stdin is added to it)")
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--temperature", type=float, help="0 for the same answer every time")
    p.add_argument("--max-tokens", type=int, help="longest answer, in tokens")
    p.set_defaults(client=cmd_run)
