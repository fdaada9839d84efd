"""Dukat's gateway: the OpenAI-compatible API and the ModelManager."""

from typing import Any

__all__ = ["ModelManager"]


def __getattr__(name: str) -> Any:
    # Lazy: `python -m gateway.cli.main` should not pay for the manager's imports before it needs them.
    if name == "ModelManager":
        from gateway.seed_api import ModelManager

        return ModelManager
    raise AttributeError(name)
