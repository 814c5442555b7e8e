"""The model a server serves: the export read through `Predictor` (files checked against their sha256, the
vocabularies loaded), its protocol name and metadata, and the batcher its requests go through."""
from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from ..config import check_range
from ..errors import LightFMPError
from ..export.contract import InputSpec, ServingContract
from ..export.exporter import triton_model_name
from ..export.feeds import sample_feeds
from ..serving import Predictor
from .batcher import Batcher
from .protocol import model_metadata


def served_name(contract: ServingContract, export_dir: str | Path) -> str:
    """The name the model is served under: the export's Triton model name (`triton_model`), or for an export
    that records none, the name the exporter would give its directory."""
    return contract.triton_model or triton_model_name(Path(export_dir).resolve().name)


class ServedModel:
    """`threads`: ONNX Runtime intra-op threads (None: the library default). The model is run once on a sampled
    row before serving, so a model ONNX Runtime cannot run fails here rather than on the first request."""

    def __init__(self, export_dir: str | Path, threads: int | None = 1, max_batch: int = 512,
                 wait_ms: float = 2.0, workers: int | None = None):
        for name, value, low in (("max_batch", max_batch, 1), ("wait_ms", wait_ms, 0), ("workers", workers, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                      or name != "wait_ms" and not float(value).is_integer()):
                raise LightFMPError(f"{name} {value!r}: must be a {'number' if name == 'wait_ms' else 'whole number'}")
            if value is not None:
                check_range(name, value, low)
        self.predictor = Predictor(export_dir, threads=threads)
        self.export_dir = Path(export_dir)
        contract = self.predictor.bundle.contract
        self.contract = contract
        self.name = served_name(contract, self.export_dir)
        self.output = contract.output.name
        self.metadata = model_metadata(contract, self.name)
        self.max_batch, self.wait_ms, self.workers = max_batch, wait_ms, workers
        self.batcher: Batcher | None = None
        try:
            self.run(sample_feeds(self.specs, 1))
        except Exception as e:
            raise LightFMPError(f"{self.predictor.bundle.model_path}: ONNX Runtime cannot run it "
                                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None

    @property
    def specs(self) -> list[InputSpec]:
        return self.contract.inputs

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The model on one batch (blocking; the batcher calls it on a worker thread): ONNX Runtime calls of at most
        `serving.RUN_ROWS` rows, so a large request's memory stays that of its slices."""
        return self.predictor.run(feeds)

    async def start(self, on_call=None, in_flight=None) -> None:
        """`on_call(rows, requests)`: told about every model call; `in_flight()`: scoring requests being handled
        (see `Batcher`)."""
        self.batcher = Batcher(self.run, self.max_batch, self.wait_ms, workers=self.workers, on_call=on_call,
                               in_flight=in_flight)
        await self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
            self.batcher = None

    async def score(self, feeds: dict[str, np.ndarray], rows: int) -> np.ndarray:
        if not rows:
            return np.zeros(0, dtype=np.float32)
        if self.batcher is None:
            raise LightFMPError("ServedModel.score: call `await start()` first (it starts the batcher that scores)")
        return await self.batcher.score(feeds, rows)


__all__ = ["ServedModel", "served_name"]
