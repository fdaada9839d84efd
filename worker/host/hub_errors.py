"""huggingface_hub's and httpx's failures as Dukat's typed errors, naming the model and the hub."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from shared.errors import DukatError, GatedModelError, HubUnreachableError, ModelNotFoundError


@contextmanager
def hub_errors(model_id: str, revision: str | None, hub: str) -> Iterator[None]:
    """Raise a failure of the block as the typed error it means (a DukatError passes as is)."""
    try:
        yield
    except DukatError:
        raise
    except GatedRepoError as exc:  # before RepositoryNotFoundError: it is a subclass
        raise GatedModelError(_gated_message(model_id, hub), param="model") from exc
    except RevisionNotFoundError as exc:
        raise ModelNotFoundError(
            f"revision {revision!r} of model {model_id!r} not found on {hub}", param="revision"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(
            f"model {model_id!r} not found on {hub} (a private model needs HF_TOKEN)", param="model"
        ) from exc
    except RemoteEntryNotFoundError as exc:
        message = f"a file of model {model_id!r} is missing on {hub}: {exc}"
        raise ModelNotFoundError(message, param="model") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise GatedModelError(_gated_message(model_id, hub), param="model") from exc
        raise HubUnreachableError(f"the hub at {hub} answered {status} for model {model_id!r}") from exc
    except OfflineModeIsEnabled as exc:
        raise HubUnreachableError(f"cannot download {model_id!r} from {hub}: HF_HUB_OFFLINE is set") from exc
    except (httpx2.TransportError, LocalEntryNotFoundError, FileMetadataError) as exc:
        raise HubUnreachableError(
            f"cannot reach the hub at {hub} to download {model_id!r}: {_root_cause(exc)}"
        ) from exc


def _gated_message(model_id: str, hub: str) -> str:
    return (
        f"model {model_id!r} is gated on {hub}: accept its terms on the model page, then set HF_TOKEN "
        "to a token of an account with access"
    )


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"
