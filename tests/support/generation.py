"""Helpers for tests of generated text."""

from __future__ import annotations


def stop_candidate(text: str) -> str:
    """A 3-character piece from the middle of `text`, printable, for use as a stop string."""
    for start in range(4, len(text) - 3):
        piece = text[start : start + 3]
        if piece.isprintable() and "\ufffd" not in piece and piece.strip() == piece:
            return piece
    raise AssertionError(f"no stop candidate in {text!r}")
