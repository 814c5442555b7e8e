"""The Starlette application: the Open Inference Protocol (KServe v2 REST) routes for one model, the raw-records
route, /metrics, and the error handling every route shares (one-line `{"error": ...}` bodies, 4xx for bad
requests, a body-size limit checked before the body is read)."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from .metrics import CONTENT_TYPE, Metrics
from .model import ServedModel
from .protocol import HEADER_LENGTH, VERSION, RequestError, dumps, infer_response, parse_infer
from .records import encode_records, parse_records

log = logging.getLogger("lightfmp.serve")
# bodies up to this size are parsed on the event loop; larger ones on a worker thread, so the loop keeps accepting
INLINE_PARSE_BYTES = 256 * 1024
EXTENSIONS = ["binary_tensor_data", "lightfmp_records", "metrics"]


def json_response(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(dumps(obj), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return json_response({"error": " ".join(str(message).split())}, status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes: from Content-Length
    before anything is read, else while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(f"Content-Length {declared!r} is not a byte count")
        if int(declared) > limit:
            raise RequestError(f"request body of {int(declared):,} bytes is over the limit of {limit:,} bytes "
                               f"(--max-body-mb)", 413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"request body passes the limit of {limit:,} bytes (--max-body-mb)", 413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError("the client went away before sending the whole body") from None
    return b"".join(chunks)


async def client_gone(request: Request) -> None:
    """Returns once the client has closed the connection (call after the body is read: the server's next message
    is then the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request, scoring):
    """The result of awaiting `scoring`, or None where the client closes the connection first: the scoring is then
    cancelled, which drops its rows from the batch queue (a batch already running ignores them), so that nobody's
    rows wait behind a request no one will read."""
    work, gone = asyncio.ensure_future(scoring), asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also where the handler itself is cancelled (shutdown's grace period)
        gone.cancel()
        if not work.done():
            work.cancel()
    return work.result() if work.done() and not work.cancelled() else None


def gone_response() -> Response:
    """The answer to a request whose client went away (no one reads it; the metrics count it as 499, the status
    proxies log for a client that closed the request)."""
    return error_response(499, "the client closed the connection before the answer")


def build_app(model: ServedModel, max_body_bytes: int = 16 * 1024 * 1024, metrics: Metrics | None = None) -> Starlette:
    """The ASGI app serving `model`. The model's batcher starts with the app (lifespan) and stops after the
    last request."""
    metrics = metrics or Metrics(model.name)
    # infer / records requests whose body has arrived and that are not answered yet: the batcher waits only while
    # some of them are on their way to it (not for bodies still arriving, which a slow client may take long over)
    scoring = [0]

    @contextlib.contextmanager
    def on_its_way():
        scoring[0] += 1
        try:
            yield
        finally:
            scoring[0] -= 1

    def endpoint(name: str, counted: bool = True):
        """Time the handler, count it, and turn refusals into `{"error": ...}` responses."""
        def wrap(handler):
            @functools.wraps(handler)
            async def run(request: Request) -> Response:
                t0 = time.perf_counter()
                metrics.in_flight += counted
                try:
                    response = await handler(request)
                except RequestError as e:
                    response = error_response(e.status, str(e))
                except UnicodeEncodeError:  # the request's JSON escaped half of a UTF-16 pair ("\ud800"): a bad string
                    response = error_response(400, "a string value is not valid Unicode (a lone surrogate escape such "
                                                   "as \\ud800)")
                except asyncio.CancelledError:  # shutdown's grace period passed first (a body still arriving)
                    asyncio.current_task().uncancel()  # answered: the task ends normally
                    log.warning("%s %s: the server stopped before the request finished", request.method,
                                request.url.path)
                    response = error_response(503, "the server is shutting down and this request did not finish "
                                                   "within its grace period; send it again")
                except Exception as e:  # a fault of the server, not of the request: log it, answer 500
                    log.exception("%s %s failed", request.method, request.url.path)
                    response = error_response(500, f"internal error: {type(e).__name__}: "
                                                   f"{str(e).splitlines()[0] if str(e) else ''}")
                finally:
                    metrics.in_flight -= counted
                metrics.request(name, response.status_code, time.perf_counter() - t0)
                return response
            return run
        return wrap

    def check_model(request: Request) -> None:
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != model.name:
            raise RequestError(f"unknown model '{name[:60]}' (this server serves '{model.name}')", 404)
        if version not in (None, "", VERSION):
            raise RequestError(f"model '{name}' has no version '{version[:20]}' (versions: {VERSION})", 404)

    @endpoint("server_metadata")
    async def server_metadata(request: Request) -> Response:
        return json_response({"name": "lightfmp", "version": __version__, "extensions": EXTENSIONS})

    @endpoint("health")
    async def health(request: Request) -> Response:
        # the server accepts connections only once the model is loaded, so live and ready are the same here
        return Response(b"", status_code=200)

    @endpoint("model_metadata")
    async def metadata(request: Request) -> Response:
        check_model(request)
        return json_response(model.metadata)

    @endpoint("model_ready")
    async def model_ready(request: Request) -> Response:
        check_model(request)
        return Response(b"", status_code=200)

    def check_identity(request: Request) -> None:
        if request.headers.get("content-encoding", "").strip().lower() not in ("", "identity"):  # case-insensitive
            raise RequestError(f"Content-Encoding {request.headers['content-encoding']!r} is not supported; send "
                               f"the body uncompressed", 415)

    @endpoint("infer")
    async def infer(request: Request) -> Response:
        check_model(request)
        check_identity(request)
        body = await read_body(request, max_body_bytes)
        with on_its_way():
            parse = functools.partial(parse_infer, body, request.headers.get(HEADER_LENGTH), model.specs, model.name,
                                      model.output)
            req = await run_in_threadpool(parse) if len(body) > INLINE_PARSE_BYTES else parse()
            probs = await unless_gone(request, model.score(req.feeds, req.rows))
        if probs is None:
            return gone_response()
        content, headers = infer_response(model.name, model.output, probs, req.id, req.binary_output)
        return Response(content, media_type="application/octet-stream" if headers else "application/json",
                        headers=headers)

    @endpoint("records")
    async def records(request: Request) -> Response:
        check_model(request)
        check_identity(request)
        body = await read_body(request, max_body_bytes)

        def prepare():
            rows = parse_records(body)
            return (encode_records(model.predictor, rows) if rows else {}), len(rows)
        with on_its_way():
            feeds, n = await run_in_threadpool(prepare)
            probs = await unless_gone(request, model.score(feeds, n))
        if probs is None:
            return gone_response()
        content, _ = infer_response(model.name, model.output, probs, None, binary=False)
        return Response(content, media_type="application/json")

    @endpoint("metrics", counted=False)
    async def metrics_text(request: Request) -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        """Unknown paths (404) and wrong methods (405), in the protocol's error body."""
        metrics.request("other", exc.status_code, None)  # answered by the router: not timed
        what = "no such endpoint" if exc.status_code == 404 else exc.detail
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {what}", exc.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await model.start(on_call=metrics.model_call, in_flight=lambda: scoring[0])
        try:
            yield
        finally:
            await model.stop()

    get, post = ["GET"], ["POST"]
    model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    routes = [Route("/v2", server_metadata, methods=get),
              Route("/v2/health/live", health, methods=get),
              Route("/v2/health/ready", health, methods=get),
              *[Route(p, metadata, methods=get) for p in model_paths],
              *[Route(p + "/ready", model_ready, methods=get) for p in model_paths],
              *[Route(p + "/infer", infer, methods=post) for p in model_paths],
              *[Route(p + "/records", records, methods=post) for p in model_paths],
              Route("/metrics", metrics_text, methods=get)]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.router.redirect_slashes = False  # a path with a trailing '/' is not a route: 404 in the error body, not a 307
    app.state.metrics, app.state.model = metrics, model
    return app


__all__ = ["build_app", "read_body", "error_response", "INLINE_PARSE_BYTES"]
