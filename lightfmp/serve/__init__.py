"""`lightfmp serve`: an export behind the Open Inference Protocol (KServe v2 REST), with dynamic batching.

Modules, one job each: `protocol` (requests and responses of the protocol, metadata from the serving contract),
`records` (the raw-records route, encoded as `Predictor` does), `batcher` (dynamic batching onto worker threads),
`metrics` (Prometheus text), `model` (the export being served), `app` (the Starlette routes), `server` (options,
port, uvicorn, graceful shutdown), `load` (the client-side load measurement behind `lightfmp profile --url`).
"""
from .app import build_app
from .model import ServedModel
from .server import ServeOptions, serve

__all__ = ["serve", "ServeOptions", "ServedModel", "build_app"]
