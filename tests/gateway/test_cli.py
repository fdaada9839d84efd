"""`dukat pull|list|ps|load|unload|stop|default` as a user runs them against a real `dukat serve`;
every effect is checked through the HTTP API, every failure by exit code and message."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.processes import HOST_READY, ChildProcess
from tests.gateway.conftest import DEFAULT_MODEL, SERVED, TEST_ENV, Dukat
from tests.support.checks import error_of
from tests.support.hub_fixtures import TINY_REPO

UNLOAD_ME = "tiny/unload-me"


def dukat_cli(
    dukat: Dukat, command: str, *args: str, url: str | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """`dukat COMMAND ARGS --url URL`, its stdin a pipe holding `stdin` (never the test's terminal)."""
    env = {**os.environ, **TEST_ENV}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", command, *args, "--url", url or dukat.url],
        capture_output=True, text=True, timeout=180, env=env, input=stdin,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    streams = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, f"exit {result.returncode}\n{streams}"
    return result.stdout


def ps(http: httpx.Client) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in http.get("/api/ps").json()["data"]}


@pytest.fixture
def restore_default(dukat: Dukat, http: httpx.Client) -> Iterator[None]:
    try:
        yield
    finally:
        assert http.post("/api/models/default", json={"model": DEFAULT_MODEL}).status_code == 200


def test_list_prints_every_model_with_full_ids_and_the_default(dukat: Dukat) -> None:
    out = ok(dukat_cli(dukat, "list"))
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for model_id in SERVED:
        # Whole ids, even piped into something that is not a terminal: users copy them.
        assert model_id in rows, (model_id, out)
    assert rows[DEFAULT_MODEL][-1] == "*" and "tinyllama" in rows[DEFAULT_MODEL]
    assert rows["tiny/mistral"][-1] != "*"


def test_ps_prints_loaded_models_with_device_and_memory(dukat: Dukat, http: httpx.Client) -> None:
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    chat = http.post("/v1/chat/completions", json=body)
    assert chat.status_code == 200, chat.text
    out = ok(dukat_cli(dukat, "ps"))
    line = next(line for line in out.splitlines() if line.startswith(f"{DEFAULT_MODEL} "))
    assert "loaded" in line.split() and "cpu" in line.split() and ("MiB" in line or "KiB" in line)


def test_pull_with_a_revision_shows_progress_and_downloads_it(dukat: Dukat, http: httpx.Client) -> None:
    result = dukat_cli(dukat, "pull", TINY_REPO, "--revision", "v2", "--progress")
    out = ok(result)
    assert f"pulled {TINY_REPO} (revision v2)" in out and re.search(r": \d+ files, [\d.]+ [KMG]iB into ", out)
    assert TINY_REPO in result.stderr, result.stderr  # the progress bar, on stderr

    folder = dukat.models_dir / TINY_REPO
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"  # v2 is a tiny llama
    assert json.loads((folder / ".dukat-download.json").read_text())["revision"] == "v2"
    row = {m["id"]: m for m in http.get("/api/models").json()["data"]}[TINY_REPO]
    assert row["downloaded"] is True and row["size_bytes"] > 0


def test_pull_of_a_missing_repo_exits_nonzero_with_the_reason(dukat: Dukat) -> None:
    result = dukat_cli(dukat, "pull", "dukat-test/not-on-the-hub")
    assert result.returncode != 0
    assert "model_not_found" in result.stderr and "dukat-test/not-on-the-hub" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("restore_default")
def test_load_unload_and_default_change_the_server(dukat: Dukat, http: httpx.Client) -> None:
    if UNLOAD_ME in ps(http):
        http.post("/api/models/unload", json={"model": UNLOAD_ME})

    out = ok(dukat_cli(dukat, "load", UNLOAD_ME, "--quantization", "none", "--device", "cpu"))
    assert f"loaded {UNLOAD_ME} on cpu (none)" in out
    row = ps(http)[UNLOAD_ME]
    assert row["state"] == "loaded" and row["device"] == "cpu" and row["quantization"] == "none"

    out = ok(dukat_cli(dukat, "unload", UNLOAD_ME))
    assert f"unloaded {UNLOAD_ME}" in out
    assert UNLOAD_ME not in ps(http)

    # `stop` is Ollama's name for the same thing.
    ok(dukat_cli(dukat, "load", UNLOAD_ME, "--quantization", "none", "--device", "cpu"))
    assert f"unloaded {UNLOAD_ME}" in ok(dukat_cli(dukat, "stop", UNLOAD_ME))
    assert UNLOAD_ME not in ps(http)

    out = ok(dukat_cli(dukat, "default", "tiny/mistral"))
    assert "tiny/mistral" in out
    assert dukat.config()["default_model"] == "tiny/mistral"
    listed = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert listed["tiny/mistral"]["default"] is True


@pytest.mark.parametrize(
    ("command", "args", "status"),
    [
        ("load", ["dukat-test/not-on-the-hub"], 404),
        ("unload", ["nobody/loaded-this"], 404),
        ("default", ["nope/nothing"], 404),
        ("load", [UNLOAD_ME, "--device", "cuda:9"], 400),
    ],
    ids=["load-unknown", "unload-not-loaded", "default-unknown", "load-bad-device"],
)
def test_error_exits_nonzero_with_the_openai_message(
    dukat: Dukat, http: httpx.Client, command: str, args: list[str], status: int
) -> None:
    if args[0] in ps(http):  # loaded, a load on another device would be a conflict (409) instead
        http.post("/api/models/unload", json={"model": args[0]})
    result = dukat_cli(dukat, command, *args)
    assert result.returncode != 0 and result.stdout == "", result
    # The same request over HTTP: the CLI says exactly what the API said.
    body: dict[str, Any] = {"model": args[0]}
    if "--device" in args:
        body["device"] = args[args.index("--device") + 1]
    resp = http.post(f"/api/models/{command}", json=body)
    assert resp.status_code == status, resp.text
    message = resp.json()["error"]["message"]
    assert f"error ({status}): {message}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["list", "ps", "run"])
def test_server_that_is_not_there_is_one_line(dukat: Dukat, command: str) -> None:
    args = ["tiny/gpt2", "hi"] if command == "run" else []
    result = dukat_cli(dukat, command, *args, url="http://127.0.0.1:9")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: Dukat is not running at http://127.0.0.1:9 (start it with `dukat serve`, or give --url)"
    ]


def test_port_in_use_is_one_line(dukat: Dukat) -> None:
    port = dukat.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", port, "--models-dir", str(dukat.models_dir)],
        capture_output=True, text=True, timeout=60, env={**os.environ, **TEST_ENV},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: 127.0.0.1:{port} is already in use (is Dukat already running there?); "
        "pick another port with --port"
    ]


@pytest.mark.parametrize("command", ["list", "ps"])
def test_listings_print_the_api_data_as_json(dukat: Dukat, http: httpx.Client, command: str) -> None:
    printed = json.loads(ok(dukat_cli(dukat, command, "--json")))
    route = {"list": "/api/models", "ps": "/api/ps"}[command]
    expected = http.get(route).json()["data"]
    assert [row["id"] for row in printed] == [row["id"] for row in expected]
    assert printed and set(printed[0]) == set(expected[0])


def test_dukat_host_takes_its_flags_and_answers_its_state(tmp_path: Path) -> None:
    host = ChildProcess(
        "gateway.cli",
        ["host", "--bind", "127.0.0.1", "--port", "0", "--models-dir", str(tmp_path), "--devices", "cpu"],
        ready_prefix=HOST_READY,
    )
    url = host.start(timeout=60)
    try:
        state = httpx.get(f"{url}/state", timeout=10).json()
        assert [d["name"] for d in state["devices"]] == ["cpu"] and state["models"] == []
    finally:
        host.stop()
    assert not host.alive()


def test_serve_prints_its_url_once_it_answers(tmp_path: Path) -> None:
    env = {**os.environ, **TEST_ENV, "PYTHONUNBUFFERED": "1", "DUKAT_LOG_LEVEL": "info"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", "0", "--models-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.rstrip())
            if line.startswith("Dukat is serving at "):
                break
        banner = seen[-1]
        assert banner.startswith("Dukat is serving at http://127.0.0.1:"), "\n".join(seen)
        url = banner.split()[-1]
        # The banner came after the server could answer: the gateway's lifespan had finished (its
        # access-log line for the probe may come after the banner: the probe's reply is sent first).
        assert "INFO:     Application startup complete." in seen[:-1], "\n".join(seen)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def subcommand_options(name: str) -> dict[str, str]:
    """Every `--flag` of `dukat <name>` -> the attribute it sets."""
    import argparse

    from gateway.cli.main import build_parser

    [subparsers] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    parser = subparsers.choices[name]
    return {flag: a.dest for a in parser._actions for flag in a.option_strings if flag.startswith("--")}


@pytest.mark.parametrize("command", ["serve", "host"])
def test_server_flags_are_named_like_the_settings_they_set(command: str) -> None:
    from shared.settings import Settings

    options = subcommand_options(command)
    own = {"--help", "--demo"}  # not settings
    for flag, dest in options.items():
        if flag in own:
            continue
        assert dest in Settings.__struct_fields__, (flag, dest)
        # The name users read is the setting's; old names stay as aliases of the same option.
        assert f"--{dest.replace('_', '-')}" in options, (flag, dest)


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["serve", "--config-path", "c.json"], "config_path", "c.json"),
        (["serve", "--config", "c.json"], "config_path", "c.json"),  # the old flag
        (["host", "--host-bind", "0.0.0.0", "--host-port", "7"], "host_port", 7),
        (["host", "--bind", "0.0.0.0", "--port", "7"], "host_port", 7),
    ],
)
def test_old_flag_names_still_work(argv: list[str], dest: str, value: Any) -> None:
    from gateway.cli.main import build_parser

    assert getattr(build_parser().parse_args(argv), dest) == value


def test_version_and_a_reader_that_closed_the_pipe_are_quiet(dukat: Dukat) -> None:
    env = {**os.environ, **TEST_ENV}
    argv = [sys.executable, "-m", "gateway.cli", "--version"]
    version = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert version.returncode == 0 and re.fullmatch(r"dukat \S+.*\n", version.stdout), version
    # `| true` closes the pipe before the listing is written: `dukat list | head` on a long list.
    piped = subprocess.run(
        f"{sys.executable} -m gateway.cli list --json --url {dukat.url} | true",
        shell=True, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert piped.stderr == "", piped.stderr


def test_an_unknown_id_suggests_the_close_ids_that_exist(dukat: Dukat) -> None:
    from gateway.model_admin import close_ids

    assert close_ids("gemma3:270m", ["google/gemma-3-270m", "tiny/gpt2"]) == ["google/gemma-3-270m"]
    assert close_ids("llama3:8b", ["google/gemma-3-270m", "tiny/gpt2"]) == []
    # Ollama's spelling of a served model: the 404 names the id that exists.
    error_of(httpx.post(f"{dukat.url}/v1/completions", json={"model": "tiny-llama", "prompt": "Hi"}), 404)
    answer = httpx.post(f"{dukat.url}/v1/completions", json={"model": "tiny-llama", "prompt": "Hi"}).json()
    assert "did you mean 'tiny/tinyllama'?" in answer["error"]["message"], answer
    # `dukat run` pulls a model that is not here: its failure says the same, and how to place one by hand.
    result = dukat_cli(dukat, "run", "tiny-llama", "Hello")
    assert result.returncode == 1, result
    assert "did you mean tiny/tinyllama?" in result.stderr, result.stderr
    assert "place the model by hand" in result.stderr and "models/tiny-llama/" in result.stderr, result.stderr
