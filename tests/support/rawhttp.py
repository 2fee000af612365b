"""A minimal HTTP/1.1 GET over asyncio streams, for holding thousands of long-polls
from one process: httpx's pool bookkeeping grows with its open connections, and the
measurement would be the client's."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any


async def get(
    host: str, port: int, target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes, float]:
    """One GET on its own connection: status, headers, body, and when it was answered."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        answered = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {
            k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await reader.readexactly(int(fields.get("content-length", "0")))
        return status, fields, body, answered
    finally:
        writer.close()


def body_json(body: bytes) -> Any:
    return json.loads(body)
