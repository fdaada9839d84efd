"""A safetensors file's header (tensor names, dtypes, shapes), read without its weights: 8 bytes of
little-endian length, then that much JSON."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

# A header this large is not one (real headers are KBs to a few MBs): never read it into memory.
_MAX_HEADER_BYTES = 100 << 20


def read_header(file: Path) -> dict[str, Any] | None:
    """The header's tensors by name (`__metadata__` left out); None when the file can't be read as one."""
    try:
        with file.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return None
    if not isinstance(header, dict):
        return None
    return {name: tensor for name, tensor in header.items() if name != "__metadata__"}
