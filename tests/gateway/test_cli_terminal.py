"""The CLI in a real terminal (pexpect, 80 columns): `dukat run` chats turn after turn and streams,
listings fit the width; and `dukat run` one-shot (a PROMPT or piped stdin). Every answer is checked
against the same request over HTTP at temperature 0."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import httpx
import pexpect
import pytest

from tests.gateway.conftest import DEFAULT_MODEL, SERVED, TEST_ENV, Dukat
from tests.gateway.test_cli import dukat_cli, ok

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
GREEDY = {"temperature": 0, "max_tokens": 12}


def terminal(dukat: Dukat, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable, ["-m", "gateway.cli", *args, "--url", dukat.url],
        env={**os.environ, **TEST_ENV, "TERM": "xterm"}, dimensions=(24, 80), encoding="utf-8",
        timeout=120,
    )


def screen_text(raw: str) -> str:
    return ANSI.sub("", raw).replace("\r", "")


def http_answer(http: httpx.Client, messages: list[dict[str, str]], model: str = DEFAULT_MODEL) -> str:
    body: dict[str, Any] = {"model": model, "messages": messages, **GREEDY}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def test_run_chats_turn_after_turn_until_bye(dukat: Dukat, http: httpx.Client) -> None:
    first = http_answer(http, [{"role": "user", "content": "hello"}])
    second = http_answer(http, [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "and again"},
    ])
    alone = http_answer(http, [{"role": "user", "content": "and again"}])
    assert first.strip() and second.strip() and second != alone  # the history changes the answer
    term = terminal(dukat, "run", DEFAULT_MODEL, "--temperature", "0", "--max-tokens", "12")
    try:
        term.expect_exact(">>> ")
        term.sendline("hello")
        term.expect_exact(">>> ")
        # The answer shown is the model's whole answer to this conversation: the first turn ...
        shown = screen_text(term.before).split("\n", 1)[1]  # after the echoed input line
        assert shown.strip() == first.strip(), (shown, first)
        term.sendline("and again")
        term.expect_exact(">>> ")
        # ... and the second one, which only this history gives: the chat kept the first turn.
        shown = screen_text(term.before).split("\n", 1)[1]
        assert shown.strip() == second.strip(), (shown, second)
        term.sendline("/bye")
        term.expect(pexpect.EOF)
    finally:
        term.close(force=True)
    assert term.exitstatus == 0


def test_run_with_a_prompt_answers_once(dukat: Dukat, http: httpx.Client) -> None:
    expected = http_answer(http, [{"role": "user", "content": "tell me more"}])
    out = ok(dukat_cli(dukat, "run", DEFAULT_MODEL, "tell", "me", "more", "--temperature", "0",
                       "--max-tokens", "12"))
    assert out.strip() == expected.strip()


def test_run_answers_what_is_piped_on_stdin(dukat: Dukat, http: httpx.Client) -> None:
    expected = http_answer(http, [{"role": "user", "content": "a question from a file"}])
    out = ok(dukat_cli(dukat, "run", DEFAULT_MODEL, "--temperature", "0", "--max-tokens", "12",
                       stdin="a question from a file\n"))
    assert out.strip() == expected.strip()


def test_run_of_an_embedding_model_says_it_needs_a_chat_model(dukat: Dukat) -> None:
    result = dukat_cli(dukat, "run", "tiny/bert", "hi")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: tiny/bert is an embedding model; dukat run needs a chat model"


@pytest.mark.parametrize("command", ["list", "ps"])
def test_listings_fit_an_80_column_terminal(dukat: Dukat, http: httpx.Client, command: str) -> None:
    http.post("/api/models/load", json={"model": DEFAULT_MODEL})  # ps lists something
    term = terminal(dukat, command)
    term.expect(pexpect.EOF)
    term.close()
    lines = screen_text(term.before).splitlines()
    assert term.exitstatus == 0, lines
    assert lines and all(len(line) <= 80 for line in lines), "\n".join(lines)
    ids = {line.split()[0] for line in lines if line.strip()}
    expected = SERVED if command == "list" else [DEFAULT_MODEL]
    assert set(expected) <= ids, lines  # one line per model, ids whole


def test_run_takes_ollamas_commands_and_multiline_input(dukat: Dukat, http: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first line\nsecond line"},
    ]
    body: dict[str, Any] = {"model": DEFAULT_MODEL, "messages": messages, "temperature": 0, "max_tokens": 6}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    expected = resp.json()["choices"][0]["message"]["content"]
    term = terminal(dukat, "run", DEFAULT_MODEL, "--temperature", "0", "--max-tokens", "12")
    try:
        term.expect_exact(">>> ")
        said = []
        for command in ("/show", "/set system Be brief.", "/set parameter num_predict 6", "/nonsense"):
            term.sendline(command)
            term.expect_exact(">>> ")
            said.append(screen_text(term.before))
        assert DEFAULT_MODEL in said[0] and "max_tokens 12" in said[0], said[0]
        assert "Set the system prompt." in said[1] and "Set parameter max_tokens to 6." in said[2], said
        assert "Unknown command '/nonsense'" in said[3], said[3]  # a command, never a prompt
        term.sendline('"""first line')
        term.expect_exact("... ")
        term.sendline('second line"""')
        term.expect_exact(">>> ")
        shown = screen_text(term.before).split("\n", 1)[1]  # after the echoed input line
        assert shown.strip() == expected.strip(), (shown, expected)
        term.sendline("/bye")
        term.expect(pexpect.EOF)
    finally:
        term.close(force=True)
    assert term.exitstatus == 0
