"""http(s) image URLs of a chat request, fetched by the gateway and sent on as `data:` URLs.

Off unless an admin lists hosts in DUKAT_IMAGE_URL_HOSTS (exact host names: a gateway that fetches
any URL a client names reaches whatever its network reaches). Each download is capped at
DUKAT_MAX_IMAGE_BYTES and DUKAT_IMAGE_FETCH_TIMEOUT_S, redirects are not followed (they would leave
the listed hosts), and every failure is the client's 400 naming the part. The model worker decodes
and checks the image itself (worker/model/images.py).
"""

from __future__ import annotations

import asyncio
import base64

import httpx

from shared.errors import InvalidRequestError
from shared.generation import ImageURL, Message
from shared.settings import Settings

_REMOTE = ("http://", "https://")


async def inline_images(settings: Settings, messages: list[Message], param: str = "messages") -> None:
    """Replace, in place, each http(s) `image_url` of `messages` by the fetched image's data: URL."""
    remote = [
        (f"{param}[{i}].content[{j}]", part.image_url)
        for i, message in enumerate(messages)
        if isinstance(message.content, list)
        for j, part in enumerate(message.content)
        if part.type == "image_url" and part.image_url is not None and part.image_url.url.startswith(_REMOTE)
    ]
    if not remote:
        return
    async with httpx.AsyncClient(follow_redirects=False) as client:
        for where, image in remote:
            image.url = await _fetched(client, settings, image, where)


async def _fetched(client: httpx.AsyncClient, settings: Settings, image: ImageURL, where: str) -> str:
    host = httpx.URL(image.url).host
    if host not in settings.image_url_hosts:
        raise InvalidRequestError(
            f"{where}: this server does not fetch images from {host!r} (an admin lists the hosts it may "
            "fetch from in DUKAT_IMAGE_URL_HOSTS); send the image inline as a data: URL",
            param=where,
        )
    try:
        async with asyncio.timeout(settings.image_fetch_timeout_s):
            async with client.stream("GET", image.url) as response:
                if response.status_code != 200:
                    raise InvalidRequestError(
                        f"{where}: fetching the image answered HTTP {response.status_code}", param=where
                    )
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > settings.max_image_bytes:
                        raise InvalidRequestError(
                            f"{where}: the image is over this server's limit of {settings.max_image_bytes} "
                            "bytes (DUKAT_MAX_IMAGE_BYTES)",
                            param=where,
                        )
                kind = response.headers.get("content-type", "").split(";")[0].strip() or "image/unknown"
    except TimeoutError as exc:
        raise InvalidRequestError(
            f"{where}: the image did not arrive within {settings.image_fetch_timeout_s} s", param=where
        ) from exc
    except httpx.HTTPError as exc:
        raise InvalidRequestError(f"{where}: the image cannot be fetched ({exc})", param=where) from exc
    return f"data:{kind};base64,{base64.b64encode(bytes(body)).decode()}"
