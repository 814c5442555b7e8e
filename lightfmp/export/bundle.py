"""An export as read back for serving or profiling: an export directory, or a bare .onnx file, and the ONNX
Runtime sessions that run it (validation, the Predictor and profiling share this setup).

A directory is checked against its contract (`contract.verify_files`: files inside it, sha256 as recorded). A
.onnx file carries the contract in its metadata; a file without lightfmp metadata gets generic inputs.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LightFMPError
from ..io import path_of, read_json
from ..schema import FIRST_ID
from .contract import (METADATA_KEY, SCHEMA_FILE, Bucketize, InputSpec, OutputSpec, ServingContract, check_sha256,
                       inside, load_contract, verify_files)


@dataclass
class Bundle:
    """Where the model is and the contract that describes its inputs (`dir` None: no vocab files beside it;
    `source`: where the contract was read, for errors)."""
    dir: Path | None
    model_path: Path
    contract: ServingContract
    source: str = ""

    def session(self, threads: int | None = None, profile_prefix: str | None = None,
                providers: list[str] | None = None):
        """`session` on the model, checked against the contract: the graph reads the inputs it lists, with their
        dtypes, and has its output."""
        sess = session(self.model_path, threads, profile_prefix, providers)
        check_graph(sess, self.contract, self.source or str(self.model_path), self.model_path)
        return sess

    @property
    def inputs(self) -> list[InputSpec]:
        return self.contract.inputs

    @property
    def raw(self) -> bool:
        return self.contract.raw

    def vocab(self, spec: InputSpec) -> dict[str, int] | None:
        """The field's value -> id mapping, or None when there is none (hashed, numeric, or a bare .onnx file)."""
        if self.dir is None or spec.vocab_file is None:
            return None
        p = inside(self.dir, spec.vocab_file)
        if not p.is_file():
            return None
        check_sha256(p, spec.vocab_sha256)
        mapping = read_json(p, obj=False)
        if not isinstance(mapping, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                    for v in mapping.values()):
            raise LightFMPError(f"{p}: expected an object of value -> integer id")
        if sorted(mapping.values()) != list(range(FIRST_ID, FIRST_ID + len(mapping))) \
                or FIRST_ID + len(mapping) != spec.vocab_size:
            raise LightFMPError(f"{p}: ids must be {FIRST_ID}..{spec.vocab_size - 1}, once each "
                                f"(vocab_size {spec.vocab_size} in {SCHEMA_FILE})")
        return mapping

    def vocab_tokens(self, spec: InputSpec) -> list[str] | None:
        """The vocabulary in id order (the token of id FIRST_ID first), or None."""
        mapping = self.vocab(spec)
        return None if mapping is None else [t for t, _ in sorted(mapping.items(), key=lambda kv: kv[1])]

    def model_bytes(self) -> int:
        ext = self.contract.external_data
        extra = self.model_path.parent / ext.file if ext is not None else None
        return self.model_path.stat().st_size + (extra.stat().st_size if extra is not None and extra.is_file() else 0)


def load_bundle(path: str | Path) -> Bundle:
    """DIR (with feature_schema.json, checked file by file) or a .onnx file (contract from its metadata, or
    inputs inferred from the graph)."""
    p = path_of(path, "the export")
    if p.is_dir():
        contract = load_contract(p)
        verify_files(p, contract)
        return Bundle(p, inside(p, contract.model_file), contract, str(p / SCHEMA_FILE))
    if not p.exists():
        why = "a link that leads nowhere (or in a loop)" if p.is_symlink() else "file not found"
        raise LightFMPError(f"{p}: {why}")
    proto = read_onnx(p)
    meta = {m.key: m.value for m in proto.metadata_props}
    if METADATA_KEY in meta:
        source = f"{p} (metadata {METADATA_KEY})"
        contract = ServingContract.from_dict(read_json(source, meta[METADATA_KEY], obj=False), source)
        side = p.parent / SCHEMA_FILE
        return Bundle(p.parent if side.exists() else None, p, contract, source)
    return Bundle(None, p, ServingContract(inputs_from_graph(proto, p), OutputSpec(proto.graph.output[0].name),
                                           model_file=p.name))


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


def inputs_from_graph(proto, source: str | Path = "the model") -> list[InputSpec]:
    """Input specs for an ONNX file without lightfmp metadata, shaped as a lightfmp export's inputs are: a number
    per row ([batch] floats in [0, 1)), an id per row ([batch] ids in [0, 100)) or L ids per row ([batch, L], L
    fixed); any other input is refused naming `source` and the input."""
    types = {7: "int64", 1: "float32", 8: "string", 6: "int32"}
    weights = {t.name for t in proto.graph.initializer}  # listed as inputs by older exporters; not fed
    out = []
    for i in (i for i in proto.graph.input if i.name not in weights):
        dt = types.get(i.type.tensor_type.elem_type)
        if dt is None:
            raise LightFMPError(f"{source}: input '{i.name}' has an element type lightfmp cannot generate")
        if not i.type.tensor_type.HasField("shape"):
            raise LightFMPError(f"{source}: input '{i.name}' has no shape in the graph; lightfmp cannot generate it")
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in i.type.tensor_type.shape.dim]
        if len(dims) >= 1 and isinstance(dims[0], int):
            raise LightFMPError(f"{source}: input '{i.name}' has a fixed batch of {dims[0]} (shape "
                                f"[{', '.join(map(str, dims))}]); profile times several batch sizes, so the first "
                                f"dimension must be free (export the graph with a dynamic batch axis)")
        batched = len(dims) >= 1
        if not batched or len(dims) > 2 or (len(dims) == 2 and (dt == "float32" or not isinstance(dims[1], int))):
            raise LightFMPError(
                f"{source}: input '{i.name}' has shape [{', '.join(map(str, dims))}]; without lightfmp's metadata "
                f"an input is generated only as [batch] numbers or ids, or [batch, L] ids with L fixed (a lightfmp "
                f"export's shapes)")
        kind = "numeric" if dt == "float32" else ("multi_hot" if len(dims) == 2 else "categorical")
        out.append(InputSpec(i.name, kind, dt, ["batch"] + dims[1:], 102,
                             transform=Bucketize([0.0, 1.0]) if kind == "numeric" else None,
                             max_len=dims[1] if kind == "multi_hot" else 0))
    return out


MAX_THREADS = 1024  # ONNX Runtime intra-op threads a command takes at most (as `profile --clients`): each is a thread
                   # with its own stack and spin-waiting, so a typo of 100,000 would exhaust the machine


def session(path: str | Path, threads: int | None = None, profile_prefix: str | None = None,
            providers: list[str] | None = None):
    """An InferenceSession on `path` (CPU unless `providers` says otherwise). `threads`: intra-op threads, one
    inter-op thread; `profile_prefix`: write an ONNX Runtime profiling trace with this prefix."""
    import onnxruntime as ort
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
                                or not 0 <= threads <= MAX_THREADS):
        raise LightFMPError(f"threads {threads!r}: must be a whole number from 0 to {MAX_THREADS} (0 or None: ONNX "
                            f"Runtime's default)")
    if providers is not None and (isinstance(providers, str) or not all(isinstance(p, str) for p in providers)):
        raise LightFMPError(f"providers {providers!r}: must be a list of ONNX Runtime provider names, such as "
                            f"['CPUExecutionProvider']")
    missing = [p for p in providers or [] if p not in ort.get_available_providers()]
    if missing:  # ONNX Runtime would print a banner and fall back to the CPU, silently to the caller
        raise LightFMPError(f"providers: {missing[0]!r} is not a provider this ONNX Runtime has (it has "
                            f"{', '.join(ort.get_available_providers())})")
    so = ort.SessionOptions()
    if threads:
        threads = int(threads)
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime's own exception types: a graph it cannot load is the file's problem
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LightFMPError(f"{path}: ONNX Runtime cannot load it ({why})") from None


ORT_TYPES = {"tensor(int64)": "int64", "tensor(float)": "float32", "tensor(string)": "string", "tensor(int32)": "int32"}


def check_graph(sess, contract: ServingContract, source: str, model_path: Path) -> None:
    """The contract (read from `source`) against the graph ONNX Runtime loaded: the same input names, each with the
    contract's dtype and fixed dimensions, and the contract's output among the graph's; else one error naming both
    files."""
    graph = {i.name: ORT_TYPES.get(i.type, i.type) for i in sess.get_inputs()}
    listed = {s.name: s.dtype for s in contract.inputs}
    if set(graph) != set(listed):
        extra, absent = sorted(set(listed) - set(graph)), sorted(set(graph) - set(listed))
        parts = ([f"lists {', '.join(map(repr, extra))}, which the graph does not read"] if extra else []) + \
            ([f"lacks {', '.join(map(repr, absent))}, which the graph reads"] if absent else [])
        raise LightFMPError(f"{source}: 'inputs' {' and '.join(parts)} ({model_path.name}); the contract does not "
                            f"describe this model")
    wrong = next((n for n in listed if graph[n] != listed[n]), None)
    if wrong is not None:
        raise LightFMPError(f"{source}: input '{wrong}' has dtype {listed[wrong]}, but {model_path.name} reads "
                            f"{graph[wrong]}")
    dims = {i.name: i.shape for i in sess.get_inputs()}
    for spec in contract.inputs:  # the fixed sizes (a multi-hot input's width); the batch dimension is free
        theirs = dims[spec.name]
        if len(theirs) != len(spec.shape) or any(type(a) is int and type(b) is int and a != b
                                                 for a, b in zip(spec.shape, theirs)):
            raise LightFMPError(f"{source}: input '{spec.name}' has shape {list(spec.shape)}, but {model_path.name} "
                                f"reads {list(theirs)}")
    outputs = [o.name for o in sess.get_outputs()]
    if contract.output.name not in outputs:
        raise LightFMPError(f"{source}: output '{contract.output.name}' is not an output of {model_path.name} "
                            f"({', '.join(map(repr, outputs))})")
    embedded = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if embedded is not None:
        _same_encoding(contract, ServingContract.from_dict(read_json(f"{model_path} (metadata {METADATA_KEY})",
                                                                     embedded, obj=False), str(model_path)),
                       source, model_path)


def _same_encoding(contract: ServingContract, exported: ServingContract, source: str, model_path: Path) -> None:
    """The contract read from `source` encodes inputs as the copy inside the model says (each input's kind, vocab
    file and hash, separator, buckets, ...; the output; the input mode): an edit that changes what a value becomes
    would change every prediction silently. Other keys (the Triton name, notes) may be edited."""
    mine, theirs = contract.metadata(), exported.metadata()
    exported_inputs = {i["name"]: i for i in theirs["inputs"]}  # by name: feeds are, so the order may differ
    for spec in mine["inputs"]:
        other = exported_inputs.get(spec["name"], {})
        key = next((k for k in sorted(set(spec) | set(other)) if spec.get(k) != other.get(k)), None)
        if key is not None:
            raise LightFMPError(f"{source}: input '{spec['name']}' {key} {spec.get(key)!r} differs from the "
                                f"{other.get(key)!r} {model_path.name} was exported with; export again rather than "
                                f"edit how values are encoded")
    key = next((k for k in ("input_mode", "output") if mine[k] != theirs[k]), None)
    if key is not None:
        raise LightFMPError(f"{source}: {key} differs from the contract {model_path.name} was exported with; export "
                            f"again rather than edit how values are encoded")


def run_batched(sess, feeds: dict[str, np.ndarray], batch: int = 8192, output: str | None = None) -> np.ndarray:
    """The output named `output` (default: the first) for all rows of `feeds`, `batch` rows per call."""
    n = len(next(iter(feeds.values())))
    names = None if output is None else [output]
    outs = [sess.run(names, {k: v[i:i + batch] for k, v in feeds.items()})[0] for i in range(0, n, batch)]
    return np.concatenate(outs) if outs else np.zeros(0, np.float32)


__all__ = ["Bundle", "load_bundle", "read_onnx", "inputs_from_graph", "session", "check_graph", "run_batched",
           "MAX_THREADS"]
