"""Load against a running Open Inference Protocol server, from the client side: `measure` has N concurrent
clients, each on its own keep-alive HTTP/1.1 connection, send one prepared infer request (binary tensor data)
back to back until a request count or a time limit, and reports p50 / p99 latency, requests/s, rows/s and
errors. `lightfmp profile --url` and benchmarks/serve_load.py both measure through it.

The client is a few lines over asyncio streams (standard library only), so the load generator itself costs
little CPU next to the server it measures; it speaks only plain HTTP with Content-Length bodies.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from ..errors import LightFMPError
from ..export.contract import InputSpec
from .protocol import DATATYPES, HEADER_LENGTH, dumps

REQUEST_TIMEOUT = 30.0


@dataclass
class Target:
    host: str
    port: int
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> "Target":
        try:
            url.encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8 in the argument (a shell variable from another locale)
            raise LightFMPError(f"--url {url!r}: not UTF-8 text") from None
        try:
            parts = urlsplit(url)
        except ValueError as e:  # e.g. an unclosed IPv6 bracket
            raise LightFMPError(f"--url {url!r}: expected http://HOST:PORT ({e})") from None
        if parts.scheme != "http" or not parts.hostname:
            raise LightFMPError(f"--url {url!r}: expected http://HOST:PORT (plain HTTP)")
        try:
            parts.hostname.encode("idna")  # what the connection will do with it
        except UnicodeError:  # an empty label (a..b) or one over 63 characters
            raise LightFMPError(f"--url {url!r}: {parts.hostname!r} is not a host name") from None
        try:
            port = parts.port or 80
        except ValueError:
            raise LightFMPError(f"--url {url!r}: the port is not a number in 0..65535") from None
        prefix = parts.path.rstrip("/")
        segments = [seg for seg in prefix.split("/") if seg]
        if segments[-1:] == ["v2"] or any(a == "v2" and b in ("models", "health", "repository")
                                          for a, b in zip(segments, segments[1:])):  # the routes would be /v2/v2/...
            raise LightFMPError(f"--url {url!r}: give the server's root (http://HOST:PORT, or the path a proxy "
                                f"mounts it at), without /v2: the protocol's routes /v2/models/... are added to it")
        return cls(parts.hostname, port, prefix)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"


def infer_request(specs: list[InputSpec], feeds: dict[str, np.ndarray], output: str) -> tuple[bytes, dict]:
    """An infer body in the binary tensor data extension (what tritonclient sends by default) and its headers.
    A NaN in a numeric input (drawn feeds hold a few, as missing values) is sent as 0.0: the server refuses NaN."""
    inputs, blobs = [], []
    for s in specs:
        v = feeds[s.name]
        if v.dtype.kind == "f":
            v = np.where(np.isnan(v), v.dtype.type(0), v)
        if v.dtype == object:
            raw = b"".join(struct.pack("<I", len(b)) + b for b in (str(x).encode() for x in v.ravel()))
        else:
            raw = np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")).tobytes()
        inputs.append({"name": s.name, "datatype": DATATYPES[s.dtype], "shape": list(v.shape),
                       "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    head = dumps({"inputs": inputs, "outputs": [{"name": output, "parameters": {"binary_data": True}}]})
    return head + b"".join(blobs), {HEADER_LENGTH: str(len(head)), "content-type": "application/octet-stream"}


def get_json(target: Target, path: str, timeout: float = 10.0):
    """(status, parsed JSON body or None) of GET path; an unreachable server is one error naming the URL."""
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        conn.request("GET", target.prefix + path)
        resp = conn.getresponse()
        body = resp.read()
    except OSError as e:
        raise LightFMPError(f"--url {target.url}: cannot reach the server ({e.strerror or e})") from None
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body) if body else None
    except ValueError:
        return resp.status, None


def measure(target: Target, model: str, body: bytes, headers: dict, rows: int, clients: int,
            max_requests: int, max_seconds: float) -> dict:
    """Latency and throughput of `clients` concurrent clients sending `body` (a request of `rows` rows) to
    model `model` until `max_requests` requests in all or `max_seconds`. Each client first sends one request
    that is not counted (it opens the connection). A response that is not 200 with `rows` scores is an error."""
    return asyncio.run(_measure(target, model, body, headers, rows, clients, max_requests, max_seconds))


async def _measure(target, model, body, headers, rows, clients, max_requests, max_seconds) -> dict:
    path = f"{target.prefix}/v2/models/{model}/infer"
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST {path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n{extra}"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors: list[str] = []
    conns: list = [None] * clients
    state = {"sent": 0}

    async def one(i: int) -> float | None:
        t0 = time.perf_counter()
        try:
            if conns[i] is None:
                conns[i] = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), REQUEST_TIMEOUT)
            status, head, close = await asyncio.wait_for(_roundtrip(conns[i], request), REQUEST_TIMEOUT)
            if close:
                _close(conns, i)
            problem = None if status == 200 else f"HTTP {status}: {head[:200]!r}"
            problem = problem or _check_scores(head, rows)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError,
                KeyError, IndexError, TypeError) as e:
            _close(conns, i)
            problem = f"{type(e).__name__}: {e}"
        if problem is not None:
            errors.append(problem)
            return None
        return time.perf_counter() - t0

    async def client(i: int, t_end: float) -> None:
        while state["sent"] < max_requests and time.perf_counter() < t_end:
            state["sent"] += 1
            dt = await one(i)
            if dt is not None:
                latencies.append(dt)

    await asyncio.gather(*(one(i) for i in range(clients)))  # warm-up: connections open, not counted
    warm_errors = len(errors)
    start = time.perf_counter()
    await asyncio.gather(*(client(i, start + max_seconds) for i in range(clients)))
    elapsed = time.perf_counter() - start
    for i in range(clients):
        _close(conns, i)
    t = np.asarray(latencies) * 1e3
    done = len(latencies)
    return {"clients": clients, "batch_size": rows, "requests": done, "errors": len(errors),
            "warmup_errors": warm_errors, "first_error": errors[0] if errors else None,
            "p50_ms": float(np.percentile(t, 50)) if done else None,
            "p99_ms": float(np.percentile(t, 99)) if done else None,
            "requests_per_s": done / elapsed if elapsed > 0 else 0.0,
            "rows_per_s": done * rows / elapsed if elapsed > 0 else 0.0, "seconds": elapsed,
            "request_bytes": len(body)}


async def _roundtrip(conn, request: bytes) -> tuple[int, bytes, bool]:
    """Send `request`, read one response: (status, the body's JSON header part, whether the server closes)."""
    reader, writer = conn
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" not in fields:
        raise ValueError("response without Content-Length")
    content = await reader.readexactly(int(fields["content-length"]))
    n = int(fields.get(HEADER_LENGTH, len(content)))
    return status, content[:n], fields.get("connection", "").lower() == "close"


def _check_scores(head: bytes, rows: int) -> str | None:
    doc = json.loads(head)
    shape = doc["outputs"][0]["shape"]
    return None if shape == [rows] else f"response shape {shape}, expected [{rows}]"


def _close(conns: list, i: int) -> None:
    if conns[i] is not None:
        conns[i][1].close()
        conns[i] = None


__all__ = ["Target", "infer_request", "get_json", "measure"]
