"""`lightfmp serve`: check the options, load the export, bind the port, and run the app on uvicorn until SIGTERM
or Ctrl-C, which stop accepting connections, let the requests in flight finish (up to `GRACE_SECONDS`), and exit 0."""
from __future__ import annotations

import errno
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from ..config import check_range
from ..errors import LightFMPError
from ..export.bundle import MAX_THREADS
from .app import build_app
from .model import ServedModel

GRACE_SECONDS = 30
MAX_WAIT_MS = 10_000


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 512
    batch_wait_ms: float = 2.0
    threads: int = 1
    max_body_mb: float = 16.0

    def check(self) -> "ServeOptions":
        check_range("--port", self.port, 0, 65535)
        check_range("--max-batch", self.max_batch, 1)
        check_range("--batch-wait-ms", self.batch_wait_ms, 0, MAX_WAIT_MS)
        check_range("--threads", self.threads, 0, MAX_THREADS)
        check_range("--max-body-mb", self.max_body_mb, 0, open_low=True)
        if self.max_body_bytes < 1:
            raise LightFMPError(f"--max-body-mb {self.max_body_mb:g}: is less than one byte")
        return self

    @property
    def batching(self) -> bool:
        return self.max_batch > 1 and self.batch_wait_ms > 0

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def describe(self) -> str:
        batching = (f"dynamic batching up to {self.max_batch} rows / {self.batch_wait_ms:g} ms" if self.batching
                    else "dynamic batching off")
        return f"{batching}, {self.threads or 'default'} ONNX Runtime threads, bodies up to {self.max_body_mb:g} MB"


def check_export_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise LightFMPError(f"{p}: export directory not found")
    if not p.is_dir():
        raise LightFMPError(f"{p}: not an export directory (give the directory `lightfmp export --out` wrote)")
    return p


def load_model(export_dir: str | Path, options: ServeOptions) -> ServedModel:
    return ServedModel(check_export_dir(export_dir), threads=options.threads or None, max_batch=options.max_batch,
                       wait_ms=options.batch_wait_ms)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free port); a port in use is one error naming it."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise LightFMPError(f"--host {host!r}: cannot resolve it ({e.strerror})") from None
    except UnicodeError:  # not a name IDNA can encode (bytes that are not UTF-8, a label over 63 characters)
        raise LightFMPError(f"--host {host!r}: not a host name") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise LightFMPError(f"--port {port}: {host}:{port} is already in use") from None
        raise LightFMPError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def make_server(model: ServedModel, options: ServeOptions) -> uvicorn.Server:
    app = build_app(model, options.max_body_bytes)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=GRACE_SECONDS)
    return uvicorn.Server(config)


def serve(export_dir: str | Path, options: ServeOptions, announce=print) -> None:
    """Serve until SIGTERM / SIGINT. `announce(line)` is told the URL once the port is bound."""
    options.check()
    model = load_model(export_dir, options)
    sock = bind(options.host, options.port)
    server = make_server(model, options)
    with _signals_end_quietly(server):  # from the announced line on, a stop is never lost
        announce(f"serving model '{model.name}' ({len(model.specs)} inputs) from {export_dir} on {url_of(sock)} "
                 f"({options.describe()})")
        server.run(sockets=[sock])


class _signals_end_quietly:
    """uvicorn handles SIGTERM / SIGINT while it runs (graceful shutdown) and raises the signal again once it has
    stopped, into the handler that was there before. This handler asks `server` to stop: before uvicorn has put
    its own in place (a supervisor stopping the server right after its line), the server then starts and stops at
    once; after, the signal raised again changes nothing. Either way a clean exit 0, not death by the signal (or a
    KeyboardInterrupt), and no signal lost."""

    def __init__(self, server: uvicorn.Server):
        self.server = server

    def _stop(self, *_):
        self.server.should_exit = True

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.saved[sig] = signal.signal(sig, self._stop)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False


__all__ = ["ServeOptions", "serve", "bind", "url_of", "make_server", "load_model", "check_export_dir",
           "GRACE_SECONDS"]
