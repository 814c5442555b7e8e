"""The Open Inference Protocol (KServe v2 REST) as `lightfmp serve` speaks it: model metadata from the serving
contract, infer requests checked and turned into ONNX Runtime feeds, and infer responses.

Tensor data comes as JSON (`"data"`, flat or nested, row-major) or through the binary tensor data extension
(`Inference-Header-Content-Length` header, `parameters.binary_data_size` per input), which is what
`tritonclient.http` sends by default. Every problem is a `RequestError`: an HTTP status and one line naming the
input. Ids are passed on unchanged: the graph itself reads an id outside [0, vocab_size) as the OOV id. FP32 data
holds numbers: a NaN (the `NaN` token in JSON, as tritonclient writes it, or NaN bits in binary data) is refused
naming the input and row, since the server takes no missing values; +-Infinity is a number (first / last bucket).
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass

import numpy as np

from ..encoding import unicode_text
from ..export.contract import InputSpec, ServingContract

DATATYPES = {"int64": "INT64", "float32": "FP32", "string": "BYTES"}
NUMPY = {"INT64": np.dtype("<i8"), "FP32": np.dtype("<f4")}
HEADER_LENGTH = "inference-header-content-length"
PLATFORM = "onnxruntime_onnx"
VERSION = "1"


class RequestError(Exception):
    """A request the server refuses: `status` (4xx) and a one-line message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(" ".join(str(message).split()))
        self.status = status


class NonFinite(float):
    """A `NaN` / `Infinity` token (not JSON, but what `tritonclient` and Python's `json` write for those floats), or
    a number literal too large for a float (`1e400`, which reads as infinity): a float for FP32 tensors (where an
    infinity is a number and NaN is refused), and recognisable in raw records, where all of them are refused by
    name. `token` is the text as sent."""

    def __new__(cls, token: str):
        self = super().__new__(cls, token)
        self.token = token
        return self


def _number(token: str) -> float:
    value = float(token)
    return value if math.isfinite(value) else NonFinite(token)


def loads(text: bytes | str, what: str = "request body", overflow: bool = False):
    """JSON, with `NaN` / `Infinity` tokens read as `NonFinite`; with `overflow`, number literals beyond a float's range
    (`1e400`) too (raw records refuse them by name; for tensors, read on json's fast path, they are infinities)."""
    try:
        return json.loads(text, parse_constant=NonFinite, parse_float=_number if overflow else None)
    except UnicodeDecodeError:
        raise RequestError(f"{what} is not UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise RequestError(f"{what} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise RequestError(f"{what} is nested too deeply") from None
    except ValueError:  # an integer literal longer than Python reads (sys.get_int_max_str_digits)
        raise RequestError(f"{what} has a number literal too long to read") from None


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def wire_shape(shape: list) -> list[int]:
    """A contract shape (["batch"] or ["batch", L]) as the protocol writes it: -1 for the batch axis."""
    return [-1 if d == "batch" else int(d) for d in shape]


def model_metadata(contract: ServingContract, name: str) -> dict:
    """GET /v2/models/<name>: the kept fields with their datatypes and shapes, and the output."""
    out = contract.output
    return {"name": name, "versions": [VERSION], "platform": PLATFORM,
            "inputs": [{"name": s.name, "datatype": DATATYPES[s.dtype], "shape": wire_shape(s.shape)}
                       for s in contract.inputs],
            "outputs": [{"name": out.name, "datatype": DATATYPES.get(out.dtype, "FP32"),
                         "shape": wire_shape(out.shape)}]}


@dataclass
class InferRequest:
    feeds: dict[str, np.ndarray]
    rows: int
    id: str | None = None
    binary_output: bool = False


def parse_infer(body: bytes, header_length: str | None, specs: list[InputSpec], model: str,
                output: str) -> InferRequest:
    """POST /v2/models/<name>/infer: every input of the model once, with its datatype, a shape the contract
    allows ([N] or [N, 1] for a one-value field, [N, L] for a multi-hot one), the same N for all, and data of
    that many values. Extra inputs, unknown outputs and unused binary bytes are refused."""
    head, binary = _split(body, header_length)
    try:
        doc = loads(head)
    except RequestError as e:  # binary tensors after a JSON head, sent without the header that says where it ends
        if header_length is None and re.search(rb'"binary_data_size"\s*:', body):
            raise RequestError(f"{e} (its inputs give binary_data_size: send the JSON part's length in the "
                               f"Inference-Header-Content-Length header)") from None
        raise
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise RequestError("request body must be a JSON object with an 'inputs' list")
    by_name = {s.name: s for s in specs}
    feeds: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    offset = 0
    for i, t in enumerate(doc["inputs"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise RequestError(f"inputs[{i}] must be an object with a 'name'")
        name = t["name"]
        spec = by_name.get(name)
        if spec is None:
            raise RequestError(f"input '{_clip(name)}' is not an input of model '{model}' "
                               f"(inputs: {', '.join(by_name)})")
        if name in feeds:
            raise RequestError(f"input '{name}' is given twice")
        size = _binary_size(t, name)
        chunk = None
        if size is not None:
            if offset + size > len(binary):
                raise RequestError(f"input '{name}': binary_data_size {size} runs past the end of the body")
            chunk, offset = binary[offset:offset + size], offset + size
        feeds[name], rows[name] = _tensor(t, spec, chunk)
    if offset != len(binary):
        raise RequestError(f"{len(binary) - offset} bytes of binary data after the last input")
    missing = [s for s in specs if s.name not in feeds]
    if missing:
        s = missing[0]
        raise RequestError(f"missing input '{s.name}' ({DATATYPES[s.dtype]}, shape {wire_shape(s.shape)})")
    counts = set(rows.values())
    if len(counts) > 1:
        first = specs[0].name
        other = next(s.name for s in specs if rows[s.name] != rows[first])
        raise RequestError(f"input '{other}' has {rows[other]} rows but input '{first}' has {rows[first]}")
    return InferRequest(feeds, counts.pop(), _request_id(doc), _binary_output(doc, output))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    digits = header_length.strip(" \t")  # a decimal length, as Content-Length is (no sign, '_' or other digits)
    n = int(digits) if digits.isascii() and digits.isdigit() else -1
    if not 0 < n <= len(body):
        raise RequestError(f"Inference-Header-Content-Length {header_length!r} must be a length within the body "
                           f"({len(body)} bytes)")
    return body[:n], body[n:]


def _binary_size(t: dict, name: str) -> int | None:
    params = t.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise RequestError(f"input '{name}': 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise RequestError(f"input '{name}': binary_data_size {_clip(repr(size))} must be a byte count")
    return size


def _tensor(t: dict, spec: InputSpec, chunk: bytes | None) -> tuple[np.ndarray, int]:
    """The feed for one input and its number of rows."""
    name, want = spec.name, DATATYPES[spec.dtype]
    got = t.get("datatype")
    if got != want:
        raise RequestError(f"input '{name}': datatype {_clip(repr(got))}, expected {want}")
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(f"input '{name}': shape {_clip(repr(shape))} must be a list of non-negative integers")
    width = spec.width
    allowed = [[-1, width]] if spec.kind == "multi_hot" else [[-1], [-1, 1]]
    if not any(len(shape) == len(a) and all(x in (-1, d) for x, d in zip(a, shape)) for a in allowed):
        raise RequestError(f"input '{name}': shape {_clip(str(shape))} does not fit; expected "
                           f"{' or '.join(str(a).replace('-1', 'N') for a in allowed)}")
    n = shape[0]
    count = n * (width if spec.kind == "multi_hot" else 1)
    if chunk is not None:
        if "data" in t:
            raise RequestError(f"input '{name}' has both 'data' and binary_data_size")
        values = _from_binary(chunk, want, count, name)
    else:
        if "data" not in t:
            raise RequestError(f"input '{name}' has no 'data'")
        values = _from_json(t["data"], want, count, name, shape)
    if want == "FP32":
        _refuse_nan(values, name, count // n if n else 1)
    return (values.reshape(n, width) if spec.kind == "multi_hot" else values.reshape(n)), n


def _refuse_nan(values: np.ndarray, name: str, per_row: int) -> None:
    """A numeric input carries a number in every row: NaN (a missing value) is refused, naming the first row."""
    bad = np.flatnonzero(np.isnan(values))
    if len(bad):
        more = f" (and {len(bad) - 1} more NaN)" if len(bad) > 1 else ""
        raise RequestError(f"input '{name}': row {int(bad[0]) // per_row} is NaN{more}; the server takes no missing "
                           f"values, send a number in every row")


def _from_binary(chunk: bytes, datatype: str, count: int, name: str) -> np.ndarray:
    if datatype == "BYTES":
        out, pos = [], 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise RequestError(f"input '{name}': BYTES binary data is cut inside a length prefix")
            (k,) = struct.unpack_from("<I", chunk, pos)
            if pos + 4 + k > len(chunk):
                raise RequestError(f"input '{name}': BYTES binary data is cut inside a value")
            try:
                out.append(chunk[pos + 4:pos + 4 + k].decode("utf-8"))
            except UnicodeDecodeError:
                raise RequestError(f"input '{name}': value {len(out)} is not UTF-8 text") from None
            pos += 4 + k
        values = np.asarray(out, dtype=object)
    else:
        dt = NUMPY[datatype]
        if len(chunk) != count * dt.itemsize:
            raise RequestError(f"input '{name}': {len(chunk)} bytes of binary data, expected {count * dt.itemsize} "
                               f"({count} {datatype} values)")
        values = np.frombuffer(chunk, dtype=dt).astype(dt.newbyteorder("="))
    if len(values) != count:
        raise RequestError(f"input '{name}': {len(values)} values, expected {count} for its shape")
    return values


def _flatten(data, name: str, shape: list[int]) -> list:
    """The values of `data` in row-major order: given flat, or nested exactly as `shape` (a 3 x 2 nesting of a
    [2, 3] tensor holds the right number of values in the wrong rows: refused, not read row-major)."""
    if not isinstance(data, list):
        raise RequestError(f"input '{name}': 'data' must be a list")
    nested = []
    while data and isinstance(data[0], list):
        if not all(isinstance(row, list) for row in data):
            raise RequestError(f"input '{name}': 'data' mixes lists and values")
        if len({len(row) for row in data}) > 1:  # nested data is the tensor's rows: all of one length
            raise RequestError(f"input '{name}': 'data' has rows of different lengths "
                               f"({_clip(', '.join(str(n) for n in sorted({len(row) for row in data})))})")
        nested, width = nested + [len(data)], len(data[0])
        data = [v for row in data for v in row]
    if nested and nested + [width] != list(shape):
        raise RequestError(f"input '{name}': 'data' is nested as {_clip(str(nested + [width]))}, but its shape is "
                           f"{_clip(str(list(shape)))}; "
                           f"send it flat (row-major) or nested as its shape")
    return data


def _from_json(data, datatype: str, count: int, name: str, shape: list[int]) -> np.ndarray:
    flat = _flatten(data, name, shape)
    if len(flat) != count:
        raise RequestError(f"input '{name}': {len(flat)} values, expected {count} for its shape")
    if datatype == "BYTES":
        ok = all(type(v) is str for v in flat)
    elif datatype == "INT64":
        ok = all(type(v) is int for v in flat)
    else:  # the NaN / Infinity tokens are floats too (NaN is refused once the values are read)
        ok = all(type(v) is int or isinstance(v, float) for v in flat)
    if not ok:
        _refuse_value(flat, datatype, name)
    if datatype == "BYTES":
        # one pass over all the text (a lone surrogate fails it); the value is looked for only then
        bad = None if unicode_text("".join(flat)) else next(i for i, v in enumerate(flat) if not unicode_text(v))
        if bad is not None:
            raise RequestError(f"input '{name}': value {bad} is not valid Unicode (a lone surrogate escape such as "
                               f"\\ud800)")
        return np.asarray(flat, dtype=object)
    try:
        with np.errstate(over="ignore"):  # a number beyond FP32's range is inf, as the Infinity token is (no warning)
            return np.asarray(flat, dtype=NUMPY[datatype])
    except OverflowError:  # an integer beyond what the type (or, for FP32, a float) holds: looked for only now
        pass
    if datatype == "INT64":
        bad = next((i for i, v in enumerate(flat) if not -2 ** 63 <= v < 2 ** 63), None)
        raise RequestError(f"input '{name}': value {bad} is {_clip(str(flat[bad]))}, outside the INT64 range"
                           if bad is not None else f"input '{name}': a value is outside the INT64 range")
    # an integer literal beyond a float's range is inf, as 1e400 and the Infinity token are
    flat = [v if type(v) is not int or abs(v) < 2 ** 1000 else math.inf if v > 0 else -math.inf for v in flat]
    with np.errstate(over="ignore"):
        return np.asarray(flat, dtype=NUMPY[datatype])


def _refuse_value(flat: list, datatype: str, name: str) -> None:
    """The one-line error for the first value that does not fit `datatype`."""
    for i, v in enumerate(flat):
        fits = (type(v) is str if datatype == "BYTES" else type(v) is int if datatype == "INT64"
                else type(v) is int or isinstance(v, float))
        if not fits:
            shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
            kind = "a float" if isinstance(v, float) else type(v).__name__
            raise RequestError(f"input '{name}': value {i} is {shown} ({kind}), not {datatype}")
    raise RequestError(f"input '{name}': data does not fit {datatype}")


def _clip(text: str, most: int = 60) -> str:
    """A client-given name as quoted in an error: at most `most` characters."""
    return text if len(text) <= most else text[:most - 3] + "..."


def _request_id(doc: dict) -> str | None:
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError(f"'id' must be a string, got {type(rid).__name__}")
    if rid is not None and not unicode_text(rid):  # echoed back, it would be JSON that strict parsers refuse
        raise RequestError("'id' is not valid Unicode (a lone surrogate escape such as \\ud800)")
    return rid


def _binary_output(doc: dict, output: str) -> bool:
    params = doc.get("parameters")
    if params is not None and not isinstance(params, dict):  # [], 0 and false too: never read as no parameters
        raise RequestError(f"'parameters' must be an object, got {_clip(repr(params))}")
    params = params or {}
    binary = _flag(params.get("binary_data_output", False), "parameters.binary_data_output")
    outputs = doc.get("outputs")
    if outputs is None:
        return binary
    if not isinstance(outputs, list):
        raise RequestError("'outputs' must be a list")
    for o in outputs:
        if not isinstance(o, dict) or o.get("name") != output:
            got = o.get("name") if isinstance(o, dict) else o
            raise RequestError(f"output {_clip(repr(got))} is not an output of the model (outputs: {output})")
        p = o.get("parameters")
        if p is not None and not isinstance(p, dict):
            raise RequestError(f"output '{output}': 'parameters' must be an object, got {_clip(repr(p))}")
        if p and "binary_data" in p:
            binary = _flag(p["binary_data"], f"output '{output}': parameters.binary_data")
    return binary


def _flag(value, where: str) -> bool:
    """A boolean request parameter: JSON true or false (a string such as "no" would read as true)."""
    if not isinstance(value, bool):
        raise RequestError(f"{where} must be true or false, got {_clip(repr(value))}")
    return value


def infer_response(model: str, output: str, probs: np.ndarray, request_id: str | None,
                   binary: bool) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers: JSON data, or the JSON header followed by float32 bytes."""
    tensor = {"name": output, "datatype": "FP32", "shape": [int(len(probs))]}
    doc: dict = {"model_name": model, "model_version": VERSION}
    if request_id is not None:
        doc["id"] = request_id
    if not binary:
        doc["outputs"] = [{**tensor, "data": probs.astype(np.float32).tolist()}]
        return dumps(doc), {}
    raw = np.ascontiguousarray(probs, dtype="<f4").tobytes()
    doc["outputs"] = [{**tensor, "parameters": {"binary_data_size": len(raw)}}]
    head = dumps(doc)
    return head + raw, {HEADER_LENGTH: str(len(head))}


__all__ = ["RequestError", "InferRequest", "model_metadata", "parse_infer", "infer_response", "loads", "dumps",
           "NonFinite", "wire_shape", "DATATYPES", "HEADER_LENGTH", "VERSION"]
