"""Prefix-aware routing: requests that start the same way go to the same replica, whose prefix cache
(worker/model/prefix_cache.py) then holds their shared start, unless that replica is much busier.

Agents, RAG and chat resend one long prefix (system prompt, tool definitions, the history so far)
with every request; spread by load alone, each replica computes it again. As production-stack's and
llm-d's routers do, a request's prefix picks a home replica, which it goes to while it has at most
`SLACK` more requests in flight from this gateway than the least busy one. The home is a rendezvous
hash of the prefix and the replicas' addresses: every gateway picks the same one without sharing
state (the gateway stays stateless), and a replica that leaves moves only its own prefixes.

The key is the first `KEY_CHARS` characters of the prompt as sent (tools, system prompt, messages in
order; raw prompts and token ids as they are), so requests that share at least that much share a
home; shorter prompts have no key and go by load only (their prefill is cheap anyway).
"""

from __future__ import annotations

import hashlib
import json

from shared.generation import GenerateRequest, Message

KEY_CHARS = 1024
# Requests in flight a home replica may have beyond the least busy one's and still be chosen.
SLACK = 2


def prefix_key(request: GenerateRequest) -> str | None:
    """The start of `request`'s prompt that picks its home replica (None: too short to matter)."""
    if request.prompt_ids is not None:
        text = ",".join(map(str, request.prompt_ids[: KEY_CHARS // 4]))
        return text if len(request.prompt_ids) >= KEY_CHARS // 4 else None
    parts: list[str] = []
    for tool in request.tools.tools if request.tools is not None else []:
        # Only as many tools as the key needs: this runs on the gateway's event loop.
        if sum(map(len, parts)) >= KEY_CHARS:
            break
        parts.append(json.dumps(tool, sort_keys=True))
    if request.system_prompt:
        parts.append(request.system_prompt)
    if request.prompt is not None:
        parts.append(request.prompt)
    for message in request.messages or []:
        parts.append(f"{message.role}:{_text(message)}")
        if sum(map(len, parts)) >= KEY_CHARS:
            break
    text = "\n".join(parts)
    return text[:KEY_CHARS] if len(text) >= KEY_CHARS else None


def home(key: str, addresses: list[str]) -> str:
    """The address whose hash with `key` is highest (rendezvous hashing)."""

    def weight(address: str) -> bytes:
        return hashlib.blake2b(f"{address}\n{key}".encode(), digest_size=8).digest()

    return max(addresses, key=weight)


def _text(message: Message) -> str:
    if isinstance(message.content, list):
        return "".join(part.text for part in message.content)
    return message.content or ""
