"""`dukat`: serve the gateway (with a local worker host), run a worker host, chat with a model
(`dukat run`, gateway/cli/chat.py) and manage the models of a running server (gateway/cli/models.py)."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from gateway.cli.chat import add_run_command
from gateway.cli.client import Api, CliError
from gateway.cli.models import add_model_commands
from shared.errors import DukatError, SettingsError
from shared.settings import setting_names


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.cli.serve import run_server

    overrides = {
        "host": args.host,
        "port": args.port,
        "models_dir": args.models_dir,
        "config_path": args.config_path,
        "default_model": args.default_model,
        "device_map": args.device_map,
    }
    return run_server(overrides={k: v for k, v in overrides.items() if v is not None}, demo=args.demo)


def cmd_host(args: argparse.Namespace) -> int:
    from worker.host.api import run_host

    return run_host(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dukat")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dukat",
        description="Dukat: a self-hosted, OpenAI-compatible model gateway.",
        epilog="Settings (environment): " + ", ".join(setting_names()),
    )
    p.add_argument("--version", action="version", version=f"dukat {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the gateway and a local worker host")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--models-dir")
    s.add_argument("--config-path", "--config", dest="config_path", help="DUKAT_CONFIG_PATH")
    s.add_argument("--default-model")
    s.add_argument("--device-map")
    s.add_argument("--demo", action="store_true", help="serve the offline demo chat and embedding models")
    s.set_defaults(func=cmd_serve)
    from worker.host.flags import host_arguments

    h = sub.add_parser("host", help="run a worker host", parents=[host_arguments()])
    h.set_defaults(func=cmd_host)

    add_model_commands(sub)
    add_run_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "prompt", None) is not None and not any(e.startswith("-") for e in extra):
        args.prompt += extra  # `dukat run MODEL --url U words of the prompt`: the words after a flag
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if hasattr(args, "client"):
            with Api(args.url, getattr(args, "api_key", None)) as api:
                args.client(api, args)
            return 0
        return int(args.func(args) or 0)
    except CliError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    except (SettingsError, DukatError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `dukat list | head`: the reader has what it wanted; no traceback
        # Python flushes stdout once more at exit: point it at /dev/null so that flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        where = exc.filename or "the port"
        print(f"error: {where} is already in use (is Dukat already running there?); "
              "pick another port with --port", file=sys.stderr)
        return 1
