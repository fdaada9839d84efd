"""Stopping a child for sure: SIGTERM to its whole process group, SIGKILL when it will not go; and the
ready line a child announces its port with."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from shared.processes import ready_port, terminate
from tests.support.checks import process_gone, wait_for


def spawn_with_grandchild(ignore_sigterm: bool) -> tuple[subprocess.Popen[str], int]:
    """A child in its own session that starts a grandchild (both sleep); returns the child and the
    grandchild's pid."""
    code = textwrap.dedent(
        f"""
        import signal, subprocess, sys, time
        if {ignore_sigterm}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(grandchild.pid, flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert child.stdout is not None
    return child, int(child.stdout.readline())


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["leaves-on-sigterm", "needs-sigkill"])
def test_terminate_ends_the_child_and_what_it_started(ignore_sigterm: bool) -> None:
    child, grandchild = spawn_with_grandchild(ignore_sigterm)
    try:
        terminate(child.pid, lambda: child.poll() is not None, timeout=1.0)
        assert child.poll() is not None
        wait_for(lambda: process_gone(grandchild), 5, "the grandchild is gone with its group")
    finally:
        child.kill()
        child.wait()


def test_terminate_of_a_child_that_already_exited_is_a_no_op() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    child.wait()
    terminate(child.pid, lambda: child.poll() is not None, timeout=1.0)


@pytest.mark.parametrize(
    ("line", "port"),
    [
        ("DUKAT_HOST_READY 8100\n", 8100),
        ("DUKAT_HOST_READY 0", 0),
        ("DUKAT_HOST_READY", None),
        ("DUKAT_HOST_READY x", None),
        ("DUKAT_HOST_READYX 1", None),
        ("INFO started DUKAT_HOST_READY 1", None),
    ],
)
def test_ready_port_reads_only_the_ready_line(line: str, port: int | None) -> None:
    assert ready_port(line, "DUKAT_HOST_READY") == port


def test_a_childs_log_line_is_logged_again_with_its_level_and_name_under_one_timestamp() -> None:
    import logging

    from shared.logs import FORMAT, parse_line

    name = "worker.host.supervisor"
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, "late by %d s", (3,), None)
    line = logging.Formatter(FORMAT).format(record)
    assert parse_line(line) == (logging.WARNING, "worker.host.supervisor", "late by 3 s")
    assert parse_line("Traceback (most recent call last):") is None  # other lines are logged as they are
