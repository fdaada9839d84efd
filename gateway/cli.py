"""`dukat`: serve the gateway (with a local worker host), run a worker host, and manage models of a
running server (pull, list, ps, load, unload, default)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import httpx

from shared.errors import DukatError, SettingsError
from shared.settings import load_settings, setting_names


def _client(args: argparse.Namespace) -> httpx.Client:
    settings = load_settings()
    headers = {"Authorization": f"Bearer {settings.api_keys[0]}"} if settings.api_keys else {}
    return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=None)


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    with _client(args) as client:
        try:
            resp = client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise SystemExit(f"error: cannot reach Dukat at {args.url}: {exc}") from None
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text
        raise SystemExit(f"error ({resp.status_code}): {message}")
    return resp.json()


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import run_server

    overrides = {
        "host": args.host,
        "port": args.port,
        "models_dir": args.models_dir,
        "config_path": args.config,
        "default_model": args.default_model,
        "device_map": args.device_map,
    }
    return run_server(overrides={k: v for k, v in overrides.items() if v is not None}, demo=args.demo)


def cmd_host(args: argparse.Namespace) -> int:
    from worker.host import run_host

    return run_host(args)


def cmd_pull(args: argparse.Namespace) -> int:
    import msgspec

    from gateway.progress import DownloadBar
    from gateway.schemas import DownloadJob  # the management API's job (`model`, not the host's `model_id`)

    body = {"model": args.model, "revision": args.revision, "file": args.file}
    job = msgspec.convert(_call(args, "POST", "/api/models/pull", body), DownloadJob)
    with DownloadBar(args.model, enabled=sys.stderr.isatty() or args.progress) as bar:
        while job.status in ("queued", "running"):
            bar.update(job)
            time.sleep(0.25)
            job = msgspec.convert(_call(args, "GET", f"/api/downloads/{job.id}"), DownloadJob)
        bar.update(job)
    if job.status == "failed":
        raise SystemExit(f"error ({job.error_code}): {job.error}")
    revision = f" (revision {args.revision})" if args.revision else ""
    where = f" into {job.path}" if job.path else ""
    size = f"{job.downloaded_bytes / 2**20:.1f} MiB"
    print(f"pulled {args.model}{revision}: {job.files_done} files, {size}{where}")
    return 0


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for c in columns:
        # Ids are what users copy into the next command: never cut them short.
        table.add_column(c, no_wrap=c == "id", overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    # Piped (not a terminal), rich would squeeze the table into 80 columns and cut ids with "…".
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    console.print(table)


def cmd_list(args: argparse.Namespace) -> int:
    rows = _call(args, "GET", "/api/models")["data"]
    for row in rows:
        row["size"] = f"{row['size_bytes'] / 2**20:.1f} MiB" if row.get("size_bytes") else ""
        row["default"] = "*" if row.get("default") else ""
    _table(rows, ["id", "model_type", "quantization", "state", "size", "default", "description"])
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    rows = _call(args, "GET", "/api/ps")["data"]
    for row in rows:
        row["memory"] = f"{row['memory_bytes'] / 2**20:.1f} MiB"
    _table(rows, ["id", "state", "device", "quantization", "model_type", "memory", "error"])
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    body = {"model": args.model, "quantization": args.quantization, "device": args.device}
    state = _call(args, "POST", "/api/models/load", {k: v for k, v in body.items() if v is not None})
    print(f"loaded {state['id']} on {state['device']} ({state['quantization']})")
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    _call(args, "POST", "/api/models/unload", {"model": args.model})
    print(f"unloaded {args.model}")
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    _call(args, "POST", "/api/models/default", {"model": args.model})
    print(f"default model: {args.model}")
    return 0


def _default_url() -> str:
    try:
        settings = load_settings()
    except SettingsError:
        return "http://127.0.0.1:8000"
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dukat",
        description="Dukat: a self-hosted, OpenAI-compatible model gateway.",
        epilog="Settings (environment): " + ", ".join(setting_names()),
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the gateway and a local worker host")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--models-dir")
    s.add_argument("--config")
    s.add_argument("--default-model")
    s.add_argument("--device-map")
    s.add_argument("--demo", action="store_true", help="serve the offline demo chat and embedding models")
    s.set_defaults(func=cmd_serve)
    from worker.host import host_arguments

    h = sub.add_parser("host", help="run a worker host", parents=[host_arguments()])
    h.set_defaults(func=cmd_host)

    def client_cmd(name: str, func: Any, help_: str, model: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument(
            "--url", default=_default_url(), help="the Dukat server (default: DUKAT_HOST:DUKAT_PORT)"
        )
        if model:
            c.add_argument("model")
        c.set_defaults(func=func)
        return c

    pull = client_cmd("pull", cmd_pull, "download a model into models_dir, with a progress bar")
    pull.add_argument("--revision")
    pull.add_argument("--file", help="one file of the repo, e.g. a .gguf of a GGUF repo")
    pull.add_argument("--progress", action="store_true", help="show the bar even when not on a terminal")
    client_cmd("list", cmd_list, "models available (config file and models_dir)", model=False)
    client_cmd("ps", cmd_ps, "models loaded, with device and memory", model=False)
    load = client_cmd("load", cmd_load, "load a model into a worker process")
    load.add_argument("--quantization", choices=["4bit", "8bit", "none"])
    load.add_argument("--device", help="auto, cpu or cuda:N")
    client_cmd("unload", cmd_unload, "stop a model's worker process (frees its memory)")
    client_cmd("default", cmd_default, "set the default model (saved in the config file)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SettingsError, DukatError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
