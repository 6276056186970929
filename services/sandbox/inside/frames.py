"""The frames a tool session speaks: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.

Shared by ``session.py`` (the session's supervisor, reading the service's requests) and ``repl.py``
(the interpreter, reading the supervisor's). Both run with ``python3 -I``, which leaves this folder
off ``sys.path``; each puts it there to import this module. Reads block: each reader trusts its
writer (the service, or the supervisor); the supervisor reads the untrusted interpreter's answers
its own way, with a deadline.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

HEADER = struct.Struct(">I")


def read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``; None when the input ends first."""
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, max_bytes: int | None = None) -> dict[str, Any] | None:
    """One frame's JSON object; None at end of input, or for a frame over ``max_bytes``."""
    head = read_exactly(fd, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    if max_bytes is not None and size > max_bytes:
        return None
    body = read_exactly(fd, size)
    if body is None:
        return None
    message: dict[str, Any] = json.loads(body)
    return message


def write_frame(fd: int, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode("utf-8")
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]
