"""Images of a chat request, from their `data:` URLs to RGB pictures the model's processor takes.

Only `data:` URLs reach a model worker: the gateway fetches the http(s) images an admin allowed
(DUKAT_IMAGE_URL_HOSTS) and sends them on inline (gateway/image_fetch.py). Every failure is the
client's: a 400 naming the part (not base64, not an image, over DUKAT_MAX_IMAGE_BYTES, or over
DUKAT_MAX_IMAGE_PIXELS, which is checked from the header before any pixel is decoded).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

from shared.errors import InvalidRequestError
from shared.generation import ImageURL


def decode_image(url: str, *, max_bytes: int, max_pixels: int, where: str) -> Any:
    """The RGB PIL image of a `data:image/...;base64,...` URL (`where` names the part in errors)."""
    from PIL import Image

    data = _data_bytes(url, max_bytes, where)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise InvalidRequestError(
                f"{where}: the image is {width}x{height} pixels, over this server's limit of "
                f"{max_pixels} pixels (DUKAT_MAX_IMAGE_PIXELS)",
                param="messages",
            )
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated, unknown format
        raise InvalidRequestError(f"{where}: the image cannot be decoded ({exc})", param="messages") from exc


def _data_bytes(url: str, max_bytes: int, where: str) -> bytes:
    if url.startswith(("http://", "https://")):
        raise InvalidRequestError(
            f"{where}: image URLs are fetched only from hosts an admin lists in DUKAT_IMAGE_URL_HOSTS; "
            "send the image inline as a data: URL (data:image/png;base64,...)",
            param="messages",
        )
    header, comma, payload = url.partition(",")
    if not (url.startswith("data:") and comma and header.endswith(";base64")):
        raise InvalidRequestError(
            f"{where}: an image URL must be a base64 data: URL (data:image/png;base64,...)", param="messages"
        )
    if len(payload) > max_bytes * 4 // 3 + 4:  # before decoding it
        raise _too_large(where, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(
            f"{where}: the image's data: URL is not valid base64", param="messages"
        ) from exc
    if len(data) > max_bytes:
        raise _too_large(where, max_bytes)
    return data


def _too_large(where: str, max_bytes: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"{where}: the image is over this server's limit of {max_bytes} bytes (DUKAT_MAX_IMAGE_BYTES)",
        param="messages",
    )


@dataclass(frozen=True, kw_only=True)
class Vision:
    """What a vision model's prompts need: its processor (image processor and image tokens) and the
    server's caps on one image."""

    processor: Any
    max_bytes: int
    max_pixels: int

    def model_inputs(
        self, text: str, images: list[ImageURL], add_special: bool
    ) -> tuple[list[int], dict[str, Any]]:
        """The prompt's token ids, image tokens expanded, and the processor's other tensors (pixel
        values and the like) for the prefill's forward."""
        pictures = [
            decode_image(image.url, max_bytes=self.max_bytes, max_pixels=self.max_pixels, where=f"image {i}")
            for i, image in enumerate(images)
        ]
        try:
            out = self.processor(
                text=[text], images=[pictures], return_tensors="pt", add_special_tokens=add_special
            )
        except ValueError as exc:  # e.g. its template placed fewer image markers than images
            raise InvalidRequestError(
                f"the model's processor refused the images: {exc}", param="messages"
            ) from exc
        ids: list[int] = out["input_ids"][0].tolist()
        return ids, {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
