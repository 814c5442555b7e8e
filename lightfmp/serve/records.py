"""POST /v2/models/<name>/records: raw records (a JSON list of objects, one per row) encoded with the export's
vocabularies exactly as `lightfmp.serving.Predictor` does (unseen values -> OOV, extra keys ignored), but with no
missing values: every record needs a value for every kept field. A kept field that is `null`, absent from a
record while others have it, or a numeric value that reads as missing (a blank string, "nan") is refused naming
the record and field; a kept field absent from every record is refused by the Predictor's own check. `NaN` /
`Infinity` tokens (not JSON) and number literals beyond a float's range (`1e400`) are refused naming the record and
field."""
from __future__ import annotations

import numpy as np

from ..encoding import unicode_text
from ..errors import LightFMPError
from ..serving import Predictor
from .protocol import NonFinite, RequestError, loads


def parse_records(body: bytes) -> list[dict]:
    doc = loads(body, overflow=True)
    if not isinstance(doc, list):
        raise RequestError(f"the records body must be a JSON list of objects, got a JSON {_json_kind(doc)}")
    for i, r in enumerate(doc):
        if not isinstance(r, dict):
            raise RequestError(f"record {i} is a JSON {_json_kind(r)}, not an object")
    return doc


def encode_records(predictor: Predictor, records: list[dict]) -> dict[str, np.ndarray]:
    """The graph inputs for `records` (at least one), through the Predictor's own encoding; a missing value is
    refused."""
    names = predictor.input_names
    records = [{k: r[k] for k in names if k in r} for r in records]  # other keys are ignored, whatever they hold
    _refuse_absent(records, names)
    _refuse_bad_values(records)
    try:
        feeds = predictor.encode(records)
    except LightFMPError as e:
        raise RequestError(str(e)) from None
    for spec, _ in predictor.fields:
        if spec.kind == "numeric":
            rows = np.flatnonzero(np.isnan(feeds[spec.name]))
            if len(rows):
                r = int(rows[0])
                _refuse(r, spec.name, f"is {_shown(records[r][spec.name])}, which reads as a missing number", names)
    return feeds


def _refuse_absent(records: list[dict], names: list[str]) -> None:
    """Every record has every kept field that any record has, not null (a field no record has is left to the
    Predictor, whose error lists all such fields)."""
    present = [n for n in names if any(n in r for r in records)]
    for i, r in enumerate(records):
        for n in present:
            if r.get(n) is None:
                _refuse(i, n, "is null" if n in r else "is absent (other records have it)", names)


def _refuse_bad_values(records: list[dict]) -> None:
    """A NaN / Infinity token, or a text value UTF-8 cannot hold (a lone surrogate escape, "\\ud800"), in a kept
    field is refused naming its record and field."""
    for i, r in enumerate(records):
        for k, v in r.items():
            bad = _non_finite(v)
            if bad is not None:
                why = "NaN and Infinity are not JSON" if bad.token.lstrip("-") in ("NaN", "Infinity") else \
                    "beyond a 64-bit float's range"
                raise RequestError(f"record {i}, field '{k}': {_clipped(bad.token)} is not a finite number ({why}); "
                                   f"send a finite number")
            for t in v if isinstance(v, list) else [v]:
                if isinstance(t, str) and not unicode_text(t):
                    raise RequestError(f"record {i}, field '{k}': a text value is not valid Unicode (a lone "
                                       f"surrogate escape such as \\ud800)")


def _refuse(i: int, field: str, what: str, names: list[str]) -> None:
    raise RequestError(f"record {i}, field '{field}' {what}; the server takes no missing values: every record "
                       f"needs a value for each kept field ({', '.join(names)})")


def _shown(v) -> str:
    return _clipped(repr(v))


def _clipped(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _non_finite(v) -> NonFinite | None:
    """The first NaN / infinite number of a value or of a list value."""
    return next((t for t in (v if isinstance(v, list) else [v]) if isinstance(t, NonFinite)), None)


def _json_kind(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(v), "number")


__all__ = ["parse_records", "encode_records"]
