"""`dukat pull|list|ps|show|load|unload|stop|rm|default`: manage the models of a running Dukat."""

from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
import time
from typing import Any
from urllib.parse import quote

import msgspec

from gateway.cli.client import Api, CliError, default_url
from gateway.cli.output import Column, human_size, print_json, print_table
from shared.errors import SettingsError
from shared.settings import DEFAULTS, QUANTIZATIONS, load_settings


def pull(
    api: Api, model: str, revision: str | None = None, *, file: str | None = None, progress: bool = False
) -> dict[str, Any]:
    """Download `model` on the server, with a progress bar on stderr; returns the finished job."""
    from gateway.cli.progress import DownloadBar

    # The management API's job (`model`, not the host's `model_id`).
    from gateway.schemas.models import DownloadJob

    body = {"model": model, "revision": revision, "file": file}
    job = msgspec.convert(api.call("POST", "/api/models/pull", body), DownloadJob)
    poll_s = DEFAULTS.download_poll_s
    with contextlib.suppress(SettingsError):  # the server says what is wrong with a setting, not the client
        poll_s = load_settings().download_poll_s
    with DownloadBar(model, enabled=sys.stderr.isatty() or progress) as bar:
        while job.status in ("queued", "running"):
            bar.update(job)
            time.sleep(poll_s)
            job = msgspec.convert(api.call("GET", f"/api/downloads/{job.id}"), DownloadJob)
        bar.update(job)
    if job.status == "failed":
        raise CliError(f"error ({job.error_code}): {job.error}{_after_failed_pull(api, model)}")
    return msgspec.to_builtins(job)


def _after_failed_pull(api: Api, model: str) -> str:
    """What to try instead: the ids here that `model` may mean, and placing the files by hand."""
    from gateway.model_admin import close_ids

    known: list[str] = []
    with contextlib.suppress(CliError, KeyError, TypeError):
        known = [m["id"] for m in api.call("GET", "/api/models")["data"]]
    close = close_ids(model, known)
    meant = f"\n  did you mean {' or '.join(close)}?" if close else ""
    return (
        f"{meant}\n  or place the model by hand: its folder (config.json, weights, tokenizer files) or its "
        f".gguf file under the server's models_dir (models/ by default) as models/{model}/, then `dukat list`"
    )


def cmd_pull(api: Api, args: argparse.Namespace) -> None:
    job = pull(api, args.model, args.revision, file=args.file, progress=args.progress)
    revision = f" (revision {args.revision})" if args.revision else ""
    where = f" into {job['path']}" if job.get("path") else ""
    size = human_size(job["downloaded_bytes"]) or "0 B"
    print(f"pulled {args.model}{revision}: {job['files_done']} files, {size}{where}")


LIST_COLUMNS = [
    Column("ID", lambda r: r["id"], whole=True),
    # A LoRA adapter: the base model that serves it.
    Column("TYPE", lambda r: r.get("model_type") or (f"lora of {r['parent']}" if r.get("parent") else None)),
    Column("ARCH", lambda r: r.get("architecture")),
    Column("TASK", lambda r: r.get("task")),
    Column("QUANT", lambda r: r.get("quantization")),
    Column("STATE", lambda r: r.get("state")),
    Column("SIZE", lambda r: human_size(r.get("size_bytes"))),
    Column("", lambda r: "*" if r.get("default") else ""),
]


def cmd_list(api: Api, args: argparse.Namespace) -> None:
    rows = api.call("GET", "/api/models")["data"]
    if args.json:
        print_json(rows)
    else:
        print_table(rows, LIST_COLUMNS, footer="* default model; details: dukat show ID",
                    empty="no models yet: dukat pull ID downloads one")


PS_COLUMNS = [
    Column("ID", lambda r: r["id"], whole=True),
    Column("STATE", lambda r: r.get("state")),
    Column("DEVICE", lambda r: r.get("device")),
    Column("QUANT", lambda r: r.get("quantization")),
    Column("MEMORY", lambda r: human_size(r.get("memory_bytes")) or "0 B"),
]


def cmd_ps(api: Api, args: argparse.Namespace) -> None:
    rows = api.call("GET", "/api/ps")["data"]
    if args.json:
        print_json(rows)
        return
    failed = any(r.get("error") for r in rows)
    columns = [*PS_COLUMNS, Column("ERROR", lambda r: r.get("error"))] if failed else PS_COLUMNS
    print_table(rows, columns, empty="no model is loaded: dukat load ID (or dukat run ID) loads one")


def _fact(name: str, value: Any) -> str:
    """`    name            value`, a long value wrapped under itself within 80 columns."""
    return textwrap.fill(str(value), width=80, initial_indent=f"    {name:<16}", subsequent_indent=" " * 20)


def _show_lines(d: dict[str, Any]) -> list[str]:
    state = d.get("state") or "available"
    if d.get("device"):
        state += f" on {d['device']}"
    params = d.get("parameters")
    facts = [
        ("id", d["id"]),
        ("description", d.get("description")),
        ("type", d.get("model_type")),
        ("task", d.get("task")),
        ("architecture", d.get("architecture")),
        ("gguf file", d.get("gguf_file")),
        ("parameters", f"{params / 1e9:.2f}B" if params and params >= 1e8 else params),
        ("context length", d.get("context_length")),
        ("quantization", d.get("quantization")),
        ("size", human_size(d.get("size_bytes"))),
        ("state", state + ("  (default model)" if d.get("default") else "")),
        ("license", d.get("license") or "not stated in the model's files"),
    ]
    lines = ["  Model"] + [_fact(k, v) for k, v in facts if v not in (None, "")]
    defaults = d.get("default_parameters") or {}
    if defaults:
        lines += ["", "  Parameters"] + [f"    {k:<16}{v}" for k, v in defaults.items()]
    template = d.get("chat_template")
    lines += ["", "  Template"]
    if template:
        body = template.strip().splitlines()
        lines += [f"    {line}" for line in body[:12]]
        if len(body) > 12:
            lines.append(f"    … {len(body) - 12} more lines (dukat show --json for all)")
    else:
        lines.append(f"    none: Dukat's prompt format for {d.get('model_type') or 'its type'}")
    return lines


def cmd_show(api: Api, args: argparse.Namespace) -> None:
    details = api.call("GET", f"/api/models/{quote(args.model, safe='/')}")
    if args.json:
        print_json(details)
    else:
        print("\n".join(_show_lines(details)))


def show_text(api: Api, model: str) -> str:
    """What `dukat show MODEL` prints (`/show` inside `dukat run` too)."""
    return "\n".join(_show_lines(api.call("GET", f"/api/models/{quote(model, safe='/')}")))


def cmd_load(api: Api, args: argparse.Namespace) -> None:
    body = {"model": args.model, "quantization": args.quantization, "device": args.device}
    state = api.call("POST", "/api/models/load", {k: v for k, v in body.items() if v is not None})
    print(f"loaded {state['id']} on {state['device']} ({state['quantization']})")


def cmd_unload(api: Api, args: argparse.Namespace) -> None:
    api.call("POST", "/api/models/unload", {"model": args.model})
    print(f"unloaded {args.model}")


def cmd_rm(api: Api, args: argparse.Namespace) -> None:
    done = api.call("POST", "/api/models/delete", {"model": args.model})
    freed = human_size(done.get("freed_bytes"))
    print(f"deleted {args.model}" + (f" ({freed} freed)" if freed else ""))


def cmd_default(api: Api, args: argparse.Namespace) -> None:
    api.call("POST", "/api/models/default", {"model": args.model})
    print(f"default model: {args.model}")


def client_parser(sub: Any, name: str, help_: str, *, model: bool = True, listing: bool = False,
                  aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """A subcommand that talks to a running Dukat (`--url`), with a MODEL and `--json` as it needs."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_, aliases=list(aliases))
    p.add_argument("--url", default=default_url(), help="the Dukat server (default: DUKAT_HOST:DUKAT_PORT)")
    p.add_argument("--api-key", help="bearer key sent to the server (default: DUKAT_API_KEY)")
    if model:
        p.add_argument("model")
    if listing:
        p.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")
    return p


def add_model_commands(sub: Any) -> None:
    p = client_parser(sub, "pull", "download a model into models_dir, with a progress bar")
    p.add_argument("--revision")
    p.add_argument("--file", help="one file of the repo, e.g. a .gguf of a GGUF repo")
    p.add_argument("--progress", action="store_true", help="show the bar even when not on a terminal")
    p.set_defaults(client=cmd_pull)
    client_parser(sub, "list", "models available (config file and models_dir)", model=False,
                  listing=True).set_defaults(client=cmd_list)
    client_parser(sub, "ps", "models loaded, with device and memory", model=False,
                  listing=True).set_defaults(client=cmd_ps)
    client_parser(sub, "show", "a model's type, parameters, template, quantization, license and size",
                  listing=True).set_defaults(client=cmd_show)
    p = client_parser(sub, "load", "load a model into a worker process")
    p.add_argument("--quantization", choices=QUANTIZATIONS)
    p.add_argument("--device", help="auto, cpu or cuda:N")
    p.set_defaults(client=cmd_load)
    client_parser(sub, "unload", "stop a model's worker process (frees its memory)",
                  aliases=("stop",)).set_defaults(client=cmd_unload)
    client_parser(sub, "rm", "delete a downloaded model from models_dir").set_defaults(client=cmd_rm)
    client_parser(sub, "default", "set the default model (saved in the config file)").set_defaults(
        client=cmd_default
    )
