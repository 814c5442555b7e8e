"""POST /v2/models/<name>/records: raw records (a JSON list of objects, one per row) encoded with the export's
vocabularies exactly as `lightfmp.serving.Predictor` does: unseen values -> OOV, `null` or a key absent from some
records -> missing, a kept field absent from every record -> refused. `NaN` / `Infinity` are not JSON and are
refused naming the record and field (send `null` for a missing value)."""
from __future__ import annotations

import numpy as np

from ..errors import LightFMPError
from ..serving import Predictor
from .protocol import NonFinite, RequestError, loads


def parse_records(body: bytes) -> list[dict]:
    doc = loads(body)
    if not isinstance(doc, list):
        raise RequestError(f"the records body must be a JSON list of objects, got a JSON {_json_kind(doc)}")
    for i, r in enumerate(doc):
        if not isinstance(r, dict):
            raise RequestError(f"record {i} is a JSON {_json_kind(r)}, not an object")
        for k, v in r.items():
            if _non_finite(v):
                raise RequestError(f"record {i}, field '{k}': NaN and Infinity are not JSON; send null for a "
                                   f"missing value")
    return doc


def encode_records(predictor: Predictor, records: list[dict]) -> dict[str, np.ndarray]:
    """The graph inputs for `records` (at least one), through the Predictor's own encoding."""
    try:
        return predictor.encode(records)
    except LightFMPError as e:
        raise RequestError(str(e)) from None


def _non_finite(v) -> bool:
    return isinstance(v, NonFinite) or (isinstance(v, list) and any(isinstance(t, NonFinite) for t in v))


def _json_kind(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(v), "number")


__all__ = ["parse_records", "encode_records"]
