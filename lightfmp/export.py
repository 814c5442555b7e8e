"""`lightfmp export`: a finished run as an ONNX model plus everything a serving system needs.

DIR/model.onnx            one input per kept field, output `probability` [batch]; numeric bucketizing and OOV
                          clamping happen inside the graph
DIR/feature_schema.json   the serving contract (also in the model's metadata_props, key `lightfmp.feature_schema`)
DIR/vocab/<field>.json    raw value string -> id, per categorical / multi-hot field (hashed fields have none: their
                          `hash` entry in feature_schema.json gives the rule, and they need --inputs ids)
DIR/triton/<name>/...     a Triton model repository entry (onnxruntime_onnx)

Every export is validated (checker, graph inputs, ONNX Runtime vs PyTorch on test rows, batch 1 vs large batch);
a failed check fails the export and leaves DIR untouched.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .errors import LightFMPError
from .io import atomic_dir
from .schema import FIRST_ID, OOV_ID, PAD_ID, FeatureSchema, Field, cell_strings, split_multi

EXPORT_VERSION = 1
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 20
METADATA_KEY = "lightfmp.feature_schema"
OUTPUT_NAME = "probability"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
# protobuf cannot serialise a message over 2 GiB; leave headroom for the graph itself
EXTERNAL_DATA_THRESHOLD = 2 * 1024 ** 3 - 64 * 1024 ** 2
ML_OPSET = 3  # ai.onnx.ml version paired with ONNX opset 17 (LabelEncoder with string keys)
TOLERANCE = 1e-5
VALIDATE_ROWS = 50_000
TABLES = ("model.embedding.weight", "model.embedding.linear")


# ---- the exported module -----------------------------------------------------------------------------------------
class ServingModule(nn.Module):
    """Per-field inputs -> probability: the transforms `FeatureSchema.encode` applies, then the model.

    Categorical / multi-hot ids outside [0, vocab_size) become the OOV id; numeric values are bucketized here
    (comparisons in float32, the serving input dtype) and NaN becomes the OOV id."""

    def __init__(self, model: nn.Module, schema: FeatureSchema):
        super().__init__()
        self.model = model
        self.kinds = [f.kind for f in schema.fields]
        self.sizes = [f.vocab_size for f in schema.fields]
        for i, f in enumerate(schema.fields):
            if f.kind == "numeric":
                self.register_buffer(f"edges{i}", torch.tensor(f.boundaries or [], dtype=torch.float32))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        cols = []
        for i, (kind, x) in enumerate(zip(self.kinds, inputs)):
            if kind == "numeric":
                edges = getattr(self, f"edges{i}")
                if edges.numel():
                    ids = (x.unsqueeze(1) >= edges.unsqueeze(0)).long().sum(1) + FIRST_ID
                else:
                    ids = torch.full_like(x, FIRST_ID, dtype=torch.long)
                ids = torch.where(torch.isnan(x), torch.full_like(ids, OOV_ID), ids)
                cols.append(ids.unsqueeze(1))
            else:
                x = x.long()
                ok = (x >= 0) & (x < self.sizes[i])
                x = torch.where(ok, x, torch.full_like(x, OOV_ID))
                cols.append(x if kind == "multi_hot" else x.unsqueeze(1))
        return torch.sigmoid(self.model(torch.cat(cols, 1)))


def serving_module(model: nn.Module, schema: FeatureSchema, table_dtype: str = "fp32") -> ServingModule:
    """The module to export (eval mode). fp16: a copy whose tables went through float16 and back, which is what
    the fp16 graph computes (Gather in fp16, then an exact Cast to float32)."""
    if table_dtype == "fp16":
        model = copy.deepcopy(model)
        with torch.no_grad():
            for p in (model.embedding.weight, model.embedding.linear):
                if p is not None:
                    p.copy_(p.half().float())
    return ServingModule(model, schema).eval()


def torch_inputs(feeds: dict[str, np.ndarray], schema: FeatureSchema) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[f.name])) for f in schema.fields)


# ---- inputs from raw rows ----------------------------------------------------------------------------------------
def input_spec(f: Field, raw: bool) -> dict:
    """One entry of feature_schema.json `inputs`."""
    d: dict = {"name": f.name, "kind": f.kind, "oov_id": OOV_ID, "padding_id": PAD_ID, "vocab_size": f.vocab_size}
    if f.kind == "numeric":
        d.update(dtype="float32", shape=["batch"],
                 transform={"type": "bucketize", "boundaries": list(f.boundaries or []), "side": "right",
                            "first_id": FIRST_ID, "missing_id": OOV_ID, "compare_dtype": "float32",
                            "rule": "id = first_id + count(boundaries <= x); NaN -> missing_id"})
        return d
    if f.hashed:
        d["hash"] = {"function": "fnv1a64+splitmix64", "buckets": f.hash_buckets, "first_id": FIRST_ID,
                     "missing_id": OOV_ID,
                     "rule": "h = FNV-1a 64 over the value's UTF-8 bytes (offset 0xcbf29ce484222325, prime "
                             "0x100000001b3); h ^= h >> 30; h *= 0xbf58476d1ce4e5b9; h ^= h >> 27; "
                             "h *= 0x94d049bb133111eb; h ^= h >> 31 (all mod 2^64); id = first_id + h % buckets; "
                             "missing -> missing_id"}
    else:
        d["vocab_file"] = f"vocab/{vocab_file_name(f.name)}"
    d["dtype"] = "string" if raw else "int64"
    if f.kind == "multi_hot":
        d.update(shape=["batch", f.max_len], separator=f.separator, max_len=f.max_len)
        d["pad_value"] = "" if raw else PAD_ID
    else:
        d["shape"] = ["batch"]
    if raw:
        d["missing_value"] = ""
    return d


def vocab_file_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "field"
    # a short hash keeps two names that sanitise alike apart
    return safe + ".json" if safe == name else f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}.json"


def feeds_from_frame(df, schema: FeatureSchema, raw: bool = False) -> dict[str, np.ndarray]:
    """Graph inputs for the rows of `df`: ids (int64) or raw strings per field, numeric values as float32."""
    from .schema import encode_field, _as_float
    feeds = {}
    for f in schema.fields:
        col = df[f.name]
        if f.kind == "numeric":
            feeds[f.name] = _as_float(col, f.name).astype(np.float32)
        elif not raw:
            ids = encode_field(f, col).astype(np.int64)
            feeds[f.name] = ids if f.kind == "multi_hot" else ids[:, 0]
        elif f.kind == "categorical":
            feeds[f.name] = cell_strings(col).fillna("").to_numpy(dtype=object)
        else:
            out = np.full((len(col), f.max_len), "", dtype=object)
            for r, toks in enumerate(split_multi(col, f.separator)):
                toks = toks[:f.max_len]
                out[r, :len(toks)] = toks
            feeds[f.name] = out
    return feeds


def sample_feeds(specs: list[dict], batch: int, seed: int = 0, vocabs: dict[str, list[str]] | None = None,
                 oov_rate: float = 0.01) -> dict[str, np.ndarray]:
    """Plausible inputs drawn from each field's vocabulary: ids are Zipf-distributed over the vocabulary (vocabs
    are stored most frequent first), a few OOV / missing values, multi-hot rows of 1..L tokens. A field's values
    depend only on its name, the batch size and the seed, so two models sharing a field get the same column."""
    import zlib
    feeds = {}
    for s in specs:
        rng = np.random.default_rng([seed, batch, zlib.crc32(s["name"].encode())])
        raw = s["dtype"] == "string"
        n_real = max(int(s["vocab_size"]) - FIRST_ID, 0)
        if s["kind"] == "numeric":
            edges = np.asarray(s["transform"]["boundaries"], dtype=np.float64)
            lo, hi = (float(edges[0]), float(edges[-1])) if len(edges) else (0.0, 1.0)
            pad = 0.1 * (hi - lo) + 1e-3
            x = rng.uniform(lo - pad, hi + pad, batch).astype(np.float32)
            x[rng.random(batch) < oov_rate] = np.nan
            feeds[s["name"]] = x
            continue
        width = s["shape"][1] if s["kind"] == "multi_hot" else 1
        ids = _zipf_ids(rng, n_real, (batch, width))
        ids[rng.random((batch, width)) < oov_rate] = OOV_ID
        if s["kind"] == "multi_hot":
            lengths = rng.integers(1, width + 1, batch)
            ids[np.arange(width)[None, :] >= lengths[:, None]] = PAD_ID
        else:
            ids = ids[:, 0]
        if raw:
            toks = np.asarray(["", "<unseen>"] + list((vocabs or {}).get(s["name"], [])), dtype=object)
            ids = np.minimum(ids, len(toks) - 1)
            feeds[s["name"]] = toks[ids]
        else:
            feeds[s["name"]] = ids
    return feeds


def _zipf_ids(rng, n_real: int, shape) -> np.ndarray:
    if n_real <= 0:
        return np.full(shape, OOV_ID, dtype=np.int64)
    p = 1.0 / np.arange(1, n_real + 1) ** 1.05
    return rng.choice(n_real, size=shape, p=p / p.sum()).astype(np.int64) + FIRST_ID


# ---- export --------------------------------------------------------------------------------------------------------
def export_run(run_dir: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, dtype: str = "fp32",
               inputs: str = "ids", force: bool = False, triton_name: str | None = None,
               max_batch_size: int = 4096, validate_rows: int = VALIDATE_ROWS) -> dict:
    """Export a complete run to `out`. Returns the feature schema written (with its `validation` section)."""
    from .rundir import open_run

    out = Path(out)
    if dtype not in ("fp32", "fp16"):
        raise LightFMPError(f"--dtype {dtype!r}: expected fp32 or fp16")
    if inputs not in ("ids", "raw"):
        raise LightFMPError(f"--inputs {inputs!r}: expected ids or raw")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise LightFMPError(f"--opset {opset}: supported range is {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    if max_batch_size < 1:
        raise LightFMPError(f"--max-batch-size {max_batch_size}: must be >= 1")
    if out.exists() and not force:
        raise LightFMPError(f"{out}: already exists; pass --force to replace it")
    run = open_run(run_dir)
    if out.resolve() == run.path.resolve() or run.path.resolve() in out.resolve().parents:
        raise LightFMPError(f"{out}: must not be inside the run directory {run.path}")
    model, kept = run.load_final()
    model.eval()
    if OUTPUT_NAME in kept.names:
        raise LightFMPError(f"field '{OUTPUT_NAME}' clashes with the model's output name; rename the column")
    raw = inputs == "raw"
    hashed = [f.name for f in kept.fields if f.hashed]
    if raw and hashed:
        raise LightFMPError(f"--inputs raw: field '{hashed[0]}' is hashed (--hash-buckets) and the ONNX graph cannot "
                            f"hash strings; export with --inputs ids (feature_schema.json gives the hash rule)")
    metrics = run.metrics()
    name = _triton_model_name(triton_name or out.name)

    rows = _validation_rows(run, kept, validate_rows)
    module = serving_module(model, kept, dtype)
    schema_doc = {
        "schema_version": EXPORT_VERSION, "model_file": MODEL_FILE, "label": kept.label,
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch"]},
        "inputs": [input_spec(f, raw) for f in kept.fields],
        "dropped_fields": list(metrics.get("fields", {}).get("dropped", [])),
        "input_mode": inputs, "table_dtype": dtype, "opset": opset,
        "backbone": run.config.backbone, "run_dir": str(run.path.resolve()),
        "run_test_auc": metrics.get("test", {}).get("auc"),
        "triton_model": name, "max_batch_size": max_batch_size,
    }
    with atomic_dir(out, force=force) as tmp:
        proto = _torch_export(module, kept, rows["feeds_ids"], opset, tmp)
        if dtype == "fp16":
            _tables_to_fp16(proto)
        if raw:
            _add_label_encoders(proto, kept)
        meta = proto.metadata_props.add()
        meta.key, meta.value = METADATA_KEY, json.dumps(schema_doc, sort_keys=False)
        proto.producer_name, proto.doc_string = "lightfmp", f"lightfmp export of {run.path.name}"
        external = _save(proto, tmp / MODEL_FILE)
        _check(tmp / MODEL_FILE, kept, raw)
        validation = _validate(tmp / MODEL_FILE, module, model, kept, rows, raw, dtype,
                               metrics.get("test", {}).get("auc"))
        doc = {**schema_doc, "model_sha256": _sha256(tmp / MODEL_FILE)}
        if external:
            doc["external_data"] = {"file": EXTERNAL_DATA_FILE, "sha256": _sha256(tmp / EXTERNAL_DATA_FILE)}
        doc["validation"] = validation
        (tmp / "feature_schema.json").write_text(json.dumps(doc, indent=2) + "\n")
        (tmp / "vocab").mkdir()
        for f in kept.fields:
            if f.kind != "numeric" and not f.hashed:
                (tmp / "vocab" / vocab_file_name(f.name)).write_text(json.dumps(f.token_ids(), ensure_ascii=False))
        _write_triton(tmp / "triton" / name, kept, raw, max_batch_size)
        for p in [MODEL_FILE] + ([EXTERNAL_DATA_FILE] if external else []):
            shutil.copyfile(tmp / p, tmp / "triton" / name / "1" / p)
    return doc


def _triton_model_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text).strip("_") or "lightfmp"


def _validation_rows(run, kept: FeatureSchema, limit: int) -> dict:
    """Test-split rows of the run's data as graph inputs (ids and raw), with their labels."""
    from .data import parse_labels, parse_split, read_table, split_rows
    cfg, note = run.config, None
    df = None
    if cfg.data and Path(cfg.data).exists() and _streamed(cfg):
        df, total, all_rows = _streamed_test_rows(cfg, limit)
        expected = run.metrics().get("data", {}).get("rows")
        labels = parse_labels(df, kept.label, kept.positive, str(cfg.data))
        return {"feeds_ids": feeds_from_frame(df, kept), "feeds_raw": feeds_from_frame(df, kept, raw=True),
                "ids_f64": kept.encode(df).astype(np.int64), "labels": labels, "source": "test split",
                "note": None if expected in (None, total) else
                f"{cfg.data} has {total} rows, the run saw {expected}: the test split may differ",
                "all_test_rows": all_rows}
    if cfg.data and Path(cfg.data).exists():
        df = read_table(cfg.data)
        expected = run.metrics().get("data", {}).get("rows")
        if expected is not None and expected != len(df):
            note = f"{cfg.data} has {len(df)} rows, the run saw {expected}: the test split may differ"
    if df is None:
        # the data moved: validate on rows drawn from the vocabularies instead
        specs = [input_spec(f, False) for f in kept.fields]
        feeds = sample_feeds(specs, min(limit, 2048), seed=1)
        vocabs = {f.name: list(f.vocab or []) for f in kept.fields}
        rawf = sample_feeds([input_spec(f, True) for f in kept.fields], min(limit, 2048), seed=1, vocabs=vocabs)
        return {"feeds_ids": feeds, "feeds_raw": rawf, "labels": None, "source": "sampled",
                "note": f"data file {cfg.data!r} not found; validated on sampled rows", "all_test_rows": False}
    test = split_rows(df, parse_split(cfg.split), cfg.seed, cfg.time_column, str(cfg.data))["test"]
    all_rows = len(test) <= limit
    test_df = df.iloc[test[:limit]]
    labels = parse_labels(test_df, kept.label, kept.positive, str(cfg.data))
    return {"feeds_ids": feeds_from_frame(test_df, kept), "feeds_raw": feeds_from_frame(test_df, kept, raw=True),
            "ids_f64": kept.encode(test_df).astype(np.int64), "labels": labels, "source": "test split",
            "note": note, "all_test_rows": all_rows}


def _streamed(cfg) -> bool:
    from .pipeline import streaming
    return streaming(cfg)


def _streamed_test_rows(cfg, limit: int):
    """The first `limit` test rows of a --stream run, read batch by batch with the streaming split rule
    (a hash of the row number; lightfmp.shards.split_codes), so they are the rows the run was tested on.
    Returns (frame, rows in the file, whether every test row is in the frame)."""
    from .data import parse_split
    from .formats import read_batches
    from .shards import split_codes
    fractions, parts, kept_rows, n_test, total = parse_split(cfg.split), [], 0, 0, 0
    for df, start in read_batches(cfg.data, cfg.format, cfg.chunk_rows):
        test = df[split_codes(np.arange(start, start + len(df)), fractions, cfg.seed) == 2]
        n_test += len(test)
        total = start + len(df)
        if kept_rows < limit and len(test):
            parts.append(test.iloc[:limit - kept_rows])
            kept_rows += len(parts[-1])
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return frame, total, n_test <= limit


def _torch_export(module: ServingModule, kept: FeatureSchema, feeds: dict, opset: int, tmp: Path):
    import onnx
    names = kept.names
    example = tuple(t[:2] for t in torch_inputs(feeds, kept))
    dynamic = {n: {0: "batch"} for n in names + [OUTPUT_NAME]}
    work = tmp / ".export"
    work.mkdir()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter is deprecated in torch >= 2.9 but still the most predictable for this graph
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(work / MODEL_FILE), dynamo=False, opset_version=opset,
                              input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=dynamic,
                              do_constant_folding=True)
        proto = onnx.load(str(work / MODEL_FILE), load_external_data=True)
    except LightFMPError:
        raise
    except Exception as e:  # the exporter raises many types; the first line names the op
        raise LightFMPError(f"torch.onnx.export failed at opset {opset}: {str(e).splitlines()[0]}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return proto


def _tables_to_fp16(proto) -> None:
    """Store the embedding tables in float16: Gather reads fp16 rows, a Cast right after restores float32."""
    from onnx import TensorProto, helper, numpy_helper
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    nodes = list(g.node)
    for table in TABLES:
        if table not in inits:
            continue
        users = [n for n in nodes if table in n.input]
        if any(n.op_type != "Gather" or n.input[0] != table for n in users):
            raise LightFMPError(f"--dtype fp16: table {table} has a reader other than Gather; cannot convert")
        arr = numpy_helper.to_array(inits[table]).astype(np.float16)
        inits[table].CopyFrom(numpy_helper.from_array(arr, table))
        for n in users:
            out = n.output[0]
            n.output[0] = out + "_fp16"
            nodes.insert(nodes.index(n) + 1,
                         helper.make_node("Cast", [n.output[0]], [out], to=TensorProto.FLOAT, name=n.name + "_cast"))
    del g.node[:]
    g.node.extend(nodes)
    _drop_value_info(g)


def _add_label_encoders(proto, kept: FeatureSchema) -> None:
    """Raw-input mode: string inputs go through ai.onnx.ml LabelEncoder (vocab -> id, anything else -> OOV;
    for multi-hot also "" -> padding) into the id graph."""
    from onnx import TensorProto, helper
    g = proto.graph
    used = {v for n in g.node for v in list(n.input) + list(n.output)} | {i.name for i in g.input}
    new_nodes = []
    for inp in g.input:
        f = next((f for f in kept.fields if f.name == inp.name), None)
        if f is None or f.kind == "numeric":
            continue
        ids = inp.name + "__ids"
        while ids in used:
            ids += "_"
        used.add(ids)
        for n in g.node:
            for k, v in enumerate(n.input):
                if v == inp.name:
                    n.input[k] = ids
        mapping = f.token_ids()
        mapping[""] = PAD_ID if f.kind == "multi_hot" else OOV_ID
        new_nodes.append(helper.make_node("LabelEncoder", [inp.name], [ids], name=f"vocab_{len(new_nodes)}",
                                          domain="ai.onnx.ml", keys_strings=list(mapping),
                                          values_int64s=list(mapping.values()), default_int64=OOV_ID))
        inp.type.tensor_type.elem_type = TensorProto.STRING
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == "ai.onnx.ml" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    _drop_value_info(g)


def _drop_value_info(g) -> None:
    # stale intermediate shapes/types would fail full_check after surgery; shape inference recomputes them
    del g.value_info[:]


def _save(proto, path: Path) -> bool:
    """Save; tables over the protobuf limit go to external data. Returns whether external data was used."""
    import onnx
    from onnx import numpy_helper
    size = sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
    external = size > EXTERNAL_DATA_THRESHOLD
    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=EXTERNAL_DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    return external


def _check(path: Path, kept: FeatureSchema, raw: bool) -> None:
    import onnx
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise LightFMPError(f"exported model fails onnx.checker: {str(e).splitlines()[0]}") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    got = [(i.name, i.type.tensor_type.elem_type, _dims(i)) for i in graph.input]
    want = [(s["name"], _ONNX_TYPES[s["dtype"]], [d if isinstance(d, int) else None for d in s["shape"]])
            for s in (input_spec(f, raw) for f in kept.fields)]
    if got != want:
        raise LightFMPError(f"exported graph inputs {[g[0] for g in got]} differ from the kept fields "
                            f"{kept.names} (names, dtypes or shapes)")
    outs = [o.name for o in graph.output]
    if outs != [OUTPUT_NAME]:
        raise LightFMPError(f"exported graph outputs {outs}, expected ['{OUTPUT_NAME}']")


_ONNX_TYPES = {"int64": 7, "float32": 1, "string": 8}


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def session(path: str | Path, threads: int | None = None, profile_prefix: str | None = None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_batched(sess, feeds: dict[str, np.ndarray], batch: int = 8192) -> np.ndarray:
    n = len(next(iter(feeds.values())))
    outs = [sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0] for i in range(0, n, batch)]
    return np.concatenate(outs) if outs else np.zeros(0, np.float32)


def _validate(path: Path, module: ServingModule, model, kept: FeatureSchema, rows: dict, raw: bool, dtype: str,
              run_auc: float | None) -> dict:
    """ORT vs PyTorch on the validation rows; batch 1 vs a large batch. Raises when a check fails."""
    from .metrics import roc_auc
    sess = session(path)
    feeds = rows["feeds_raw"] if raw else rows["feeds_ids"]
    n = len(next(iter(feeds.values())))
    with torch.no_grad():
        ref = np.concatenate([module(*(t[i:i + 8192] for t in torch_inputs(rows["feeds_ids"], kept))).numpy()
                              for i in range(0, n, 8192)]) if n else np.zeros(0, np.float32)
    got = run_batched(sess, feeds)
    diff = float(np.abs(got.astype(np.float64) - ref).max()) if n else 0.0
    if not diff <= TOLERANCE:
        raise LightFMPError(f"ONNX Runtime and PyTorch disagree on {rows['source']} rows: max |diff| {diff:.3g} "
                            f"> {TOLERANCE:g}")
    k = min(n, 32)
    big = {key: v[:min(n, 4096)] for key, v in feeds.items()}
    big_out = sess.run(None, big)[0][:k]
    single = np.array([sess.run(None, {key: v[i:i + 1] for key, v in feeds.items()})[0][0] for i in range(k)])
    bdiff = float(np.abs(single - big_out).max()) if k else 0.0
    if not bdiff <= TOLERANCE:
        raise LightFMPError(f"batch of 1 and batch of {len(next(iter(big.values())))} disagree: max |diff| "
                            f"{bdiff:.3g} > {TOLERANCE:g}")
    res = {"rows": n, "source": rows["source"], "all_test_rows": rows["all_test_rows"], "tolerance": TOLERANCE,
           "max_abs_diff_vs_torch": diff, "batch1_vs_batch_max_abs_diff": bdiff}
    if rows.get("note"):
        res["note"] = rows["note"]
    if "ids_f64" in rows:
        # rows whose float32 input lands in another bucket than the training-time float64 encoding
        with torch.no_grad():
            enc = torch.sigmoid(model(torch.from_numpy(rows["ids_f64"]))).numpy().astype(np.float64)
        ids32 = _bucket_ids(rows["feeds_ids"], kept)
        res["numeric_bucket_mismatches"] = int((ids32 != rows["ids_f64"]).any(1).sum()) if ids32 is not None else 0
        if rows["labels"] is not None and len(np.unique(rows["labels"])) == 2:
            res["auc_onnx"] = roc_auc(rows["labels"], got)
            res["auc_torch"] = roc_auc(rows["labels"], enc)
            if run_auc is not None and rows["all_test_rows"]:
                res["auc_run"] = run_auc
                res["auc_diff_vs_run"] = res["auc_onnx"] - run_auc
        if dtype == "fp16":
            res["fp16"] = {"max_abs_diff_vs_fp32": float(np.abs(got.astype(np.float64) - enc).max()) if n else 0.0}
            if "auc_onnx" in res:
                res["fp16"].update(auc_fp32=res["auc_torch"], auc_fp16=res["auc_onnx"],
                                   auc_change=res["auc_onnx"] - res["auc_torch"])
    return res


def _bucket_ids(feeds: dict, kept: FeatureSchema) -> np.ndarray | None:
    """The float32 numeric bucketing the graph applies, as full id rows (non-numeric slots from the feeds)."""
    cols = []
    for f in kept.fields:
        x = feeds[f.name]
        if f.kind == "numeric":
            e = np.asarray(f.boundaries or [], dtype=np.float32)
            ids = np.searchsorted(e, x, side="right") + FIRST_ID
            ids[np.isnan(x)] = OOV_ID
            cols.append(ids[:, None])
        else:
            cols.append(x if x.ndim == 2 else x[:, None])
    return np.concatenate(cols, 1).astype(np.int64) if cols else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- Triton -------------------------------------------------------------------------------------------------------
_TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "string": "TYPE_STRING"}


def triton_config(name: str, kept: FeatureSchema, raw: bool, max_batch_size: int) -> str:
    """config.pbtxt text. Triton dims leave out the batch dim; a [batch] tensor is dims [1] reshaped to []."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def tensor(nm: str, dtype: str, shape: list) -> str:
        rest = shape[1:]
        dims = f"dims: [ {', '.join(str(d) for d in rest)} ]" if rest else "dims: [ 1 ]\n    reshape: { shape: [ ] }"
        return f"  {{\n    name: {q(nm)}\n    data_type: {_TRITON_TYPES[dtype]}\n    {dims}\n  }}"

    ins = ",\n".join(tensor(s["name"], s["dtype"], s["shape"]) for s in (input_spec(f, raw) for f in kept.fields))
    return (f"name: {q(name)}\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: {max_batch_size}\n"
            f"input [\n{ins}\n]\noutput [\n{tensor(OUTPUT_NAME, 'float32', ['batch'])}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: 100\n}}\n")


def _write_triton(d: Path, kept: FeatureSchema, raw: bool, max_batch_size: int) -> None:
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(triton_config(d.name, kept, raw, max_batch_size))


__all__ = ["export_run", "ServingModule", "serving_module", "feeds_from_frame", "sample_feeds", "session",
           "triton_config", "DEFAULT_OPSET", "METADATA_KEY"]
