"""A minimal HTTP/1.1 client, for holding thousands of long-polls from one process
over asyncio streams (httpx's pool bookkeeping grows with its open connections, and the
measurement would be the client's), for requests httpx would not send as given (any
method, any Host header), and for timing one answer on a plain socket."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any


async def request(
    method: str, host: str, port: int, target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes, float]:
    """One request on its own connection: status, headers, body, and when it was
    answered. ``headers`` may override ``Host``."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        fields = {"Host": host, **(headers or {}), "Connection": "close"}
        extra = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        writer.write(f"{method} {target} HTTP/1.1\r\n{extra}\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        answered = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        answer = {
            k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        size = 0 if method == "HEAD" or status == 304 else int(answer.get("content-length", "0"))
        body = await reader.readexactly(size)
        return status, answer, body, answered
    finally:
        writer.close()


async def get(
    host: str, port: int, target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes, float]:
    """One GET on its own connection: status, headers, body, and when it was answered."""
    return await request("GET", host, port, target, headers)


def get_blocking(host: str, port: int, target: str, timeout: float = 30) -> tuple[int, bytes]:
    """One GET on a plain blocking socket: status and body. For timing an answer from a
    thread that shares its process with a busy asyncio client (httpx there adds delays
    of its own)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def host_port(base: str) -> tuple[str, int]:
    """``http://H:P`` as (H, P)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def body_json(body: bytes) -> Any:
    return json.loads(body)
