"""Serving an export: read DIR/feature_schema.json, encode raw records exactly as training did, run ONNX Runtime.

    from lightfmp.serving import Predictor
    p = Predictor("EXPORT_DIR")
    p.predict([{"city": "paris", "price": 4.5, "tags": "a|b"}])   # -> np.ndarray of probabilities
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import LightFMPError
from .schema import Field

SCHEMA_FILE = "feature_schema.json"


@dataclass
class Bundle:
    """An export as read back: where the model is and the schema that describes its inputs."""
    dir: Path | None
    model_path: Path
    schema: dict

    @property
    def inputs(self) -> list[dict]:
        return self.schema["inputs"]

    @property
    def raw(self) -> bool:
        return self.schema.get("input_mode") == "raw"

    def vocab(self, spec: dict) -> dict[str, int] | None:
        """The field's value -> id mapping, or None when the vocab file is not there (a bare .onnx file)."""
        if self.dir is None or "vocab_file" not in spec:
            return None
        p = self.dir / spec["vocab_file"]
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise LightFMPError(f"{p}: not valid JSON ({e.msg})") from None

    def model_bytes(self) -> int:
        extra = self.model_path.parent / self.schema.get("external_data", {}).get("file", "\0")
        return self.model_path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)


def load_bundle(path: str | Path) -> Bundle:
    """DIR (with feature_schema.json) or a .onnx file (schema from its metadata, or inferred from the graph)."""
    p = Path(path)
    if p.is_dir():
        sf = p / SCHEMA_FILE
        if not sf.exists():
            raise LightFMPError(f"{p}: not a lightfmp export (no {SCHEMA_FILE})")
        try:
            schema = json.loads(sf.read_text())
        except json.JSONDecodeError as e:
            raise LightFMPError(f"{sf}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(schema, dict) or "inputs" not in schema or "model_file" not in schema:
            raise LightFMPError(f"{sf}: not a lightfmp feature schema (needs 'inputs' and 'model_file')")
        model = p / schema["model_file"]
        if not model.exists():
            raise LightFMPError(f"{model}: model file missing")
        return Bundle(p, model, schema)
    if not p.exists():
        raise LightFMPError(f"{p}: file not found")
    proto = read_onnx(p)
    meta = {m.key: m.value for m in proto.metadata_props}
    from .export import METADATA_KEY
    if METADATA_KEY in meta:
        schema = json.loads(meta[METADATA_KEY])
        side = p.parent / SCHEMA_FILE
        return Bundle(p.parent if side.exists() else None, p, schema)
    return Bundle(None, p, {"inputs": _inputs_from_graph(proto), "output": {"name": proto.graph.output[0].name},
                            "model_file": p.name})


def read_onnx(p: Path):
    """The model proto without its external data; a clear error when the file is not ONNX."""
    import onnx
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise LightFMPError(f"{p}: not an ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                            ) from None
    if not len(proto.graph.node) or not len(proto.graph.output):
        raise LightFMPError(f"{p}: not an ONNX model (no graph)")
    return proto


def _inputs_from_graph(proto) -> list[dict]:
    """Input specs for an ONNX file without lightfmp metadata: ids in [0, 100), floats in [0, 1)."""
    types = {7: "int64", 1: "float32", 8: "string", 6: "int32"}
    out = []
    for i in proto.graph.input:
        dt = types.get(i.type.tensor_type.elem_type)
        if dt is None:
            raise LightFMPError(f"input '{i.name}' has an element type lightfmp cannot generate")
        dims = [d.dim_value if d.HasField("dim_value") else "batch" for d in i.type.tensor_type.shape.dim]
        kind = "numeric" if dt == "float32" else ("multi_hot" if len(dims) == 2 else "categorical")
        spec = {"name": i.name, "kind": kind, "dtype": dt, "shape": ["batch"] + dims[1:], "vocab_size": 102}
        if kind == "numeric":
            spec["transform"] = {"boundaries": [0.0, 1.0]}
        out.append(spec)
    return out


class Predictor:
    """Raw records in, probabilities out. Records are a list of dicts or a DataFrame; extra columns are ignored,
    unseen values go to the OOV id, missing values (None / NaN / absent key in some records) too."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None):
        import onnxruntime as ort
        self.bundle = load_bundle(path)
        if self.bundle.dir is None:
            raise LightFMPError(f"{path}: a Predictor needs the export directory (with {SCHEMA_FILE} and vocab/)")
        self.fields: list[tuple[dict, Field]] = []
        for spec in self.bundle.inputs:
            hashed = spec.get("hash", {}).get("buckets")  # a hashed field: encoded by the rule, no vocabulary
            vocab = self.bundle.vocab(spec)
            if spec["kind"] != "numeric" and vocab is None and hashed is None:
                raise LightFMPError(f"{self.bundle.dir / spec['vocab_file']}: vocabulary file missing")
            tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])] if vocab is not None else None
            f = Field(spec["name"], spec["kind"], vocab=tokens, separator=spec.get("separator"),
                      max_len=int(spec.get("max_len", 0)), boundaries=spec.get("transform", {}).get("boundaries"),
                      hash_buckets=hashed)
            self.fields.append((spec, f))
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.bundle.model_path), so,
                                            providers=providers or ["CPUExecutionProvider"])
        self.output = self.bundle.schema["output"]["name"]

    @property
    def input_names(self) -> list[str]:
        return [s["name"] for s, _ in self.fields]

    def encode(self, records) -> dict[str, np.ndarray]:
        """The graph inputs for `records`."""
        from .export import feeds_from_frame
        from .schema import FeatureSchema
        df = _frame(records)
        missing = [n for n in self.input_names if n not in df.columns]
        if missing:
            raise LightFMPError(f"records lack column(s) {', '.join(repr(m) for m in missing)} that the model "
                                f"reads (kept fields: {', '.join(self.input_names)})")
        cols = {}
        for spec, f in self.fields:
            cols[f.name] = _check_column(f, df[f.name])
        schema = FeatureSchema(self.bundle.schema.get("label", "label"), [f for _, f in self.fields])
        return feeds_from_frame(pd.DataFrame(cols, index=df.index), schema, raw=self.bundle.raw)

    def predict(self, records) -> np.ndarray:
        if not isinstance(records, pd.DataFrame) and isinstance(records, (list, tuple)) and not records:
            return np.zeros(0, dtype=np.float32)
        feeds = self.encode(records)
        if not len(next(iter(feeds.values()), [])):
            return np.zeros(0, dtype=np.float32)
        return self.session.run([self.output], feeds)[0]


def _frame(records) -> pd.DataFrame:
    if isinstance(records, pd.DataFrame):
        return records.reset_index(drop=True)
    if isinstance(records, dict):
        raise LightFMPError("records must be a list of dicts or a DataFrame (got one dict; wrap it in a list)")
    try:
        rows = list(records)
    except TypeError:
        raise LightFMPError(f"records must be a list of dicts or a DataFrame, not {type(records).__name__}") from None
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise LightFMPError(f"record {i} is a {type(r).__name__}, not a dict")
    # object columns keep each value as given (no float upcast of int columns with gaps)
    return pd.DataFrame.from_records(rows).astype(object) if rows else pd.DataFrame()


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT


def _check_column(f: Field, col: pd.Series) -> pd.Series:
    """Reject values whose type cannot be a value of this field's kind; multi-hot lists become joined text."""
    if f.kind == "numeric":
        for v in col:
            if _missing(v) or (isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))):
                continue
            if isinstance(v, str):
                try:
                    float(v) if v.strip() else None
                    continue
                except ValueError:
                    pass
            raise LightFMPError(f"field '{f.name}' is numeric but got {v!r} ({type(v).__name__})")
        return pd.to_numeric(col.map(lambda v: np.nan if _missing(v) or (isinstance(v, str) and not v.strip())
                                     else v), errors="raise").astype(np.float64)
    if f.kind == "multi_hot":
        def join(v):
            if isinstance(v, (list, tuple, np.ndarray)):
                bad = [t for t in v if not isinstance(t, (str, numbers.Integral)) or isinstance(t, bool)]
                if bad:
                    raise LightFMPError(f"field '{f.name}' (multi-hot) got token {bad[0]!r} "
                                        f"({type(bad[0]).__name__}) in {list(v)!r}")
                return f.separator.join(str(t) for t in v)
            return _token(f, v, known)
        known = set(f.vocab or [])
        return col.map(join)
    known = set(f.vocab or [])
    return col.map(lambda v: _token(f, v, known))


def _token(f: Field, v, known: set):
    """A categorical value's string form as training keyed it (`cell_strings`): 24.0 reads '24' unless the
    vocabulary has '24.0' (a float column with non-integral values keeps the '.0')."""
    _scalar(f, v)
    if _missing(v):
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real) and float(v).is_integer():
        as_int = str(int(v))
        return as_int if as_int in known or str(v) not in known else str(v)
    return str(v)


def _scalar(f: Field, v) -> None:
    if _missing(v) or isinstance(v, (str, numbers.Number, np.generic)):
        return
    raise LightFMPError(f"field '{f.name}' ({f.kind}) got {v!r} ({type(v).__name__}); expected a string or number")


__all__ = ["Predictor", "load_bundle", "Bundle", "read_onnx"]
