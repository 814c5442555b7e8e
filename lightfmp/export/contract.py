"""The serving contract: a typed description of an export's inputs and files (`feature_schema.json`).

`ServingContract.to_dict()` is the JSON written to EXPORT/feature_schema.json; `ServingContract.metadata()` is the
copy stored in the model's metadata_props (without the hashes of the model files and the validation report).
`load_contract` reads and checks the JSON; `verify_files` checks that every file it names is inside the export
directory and still has the recorded sha256.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..encoding import DURATION_DERIVE, DURATION_DERIVE_RULE, TIME_DERIVE, TIME_DERIVE_RULE
from ..errors import LightFMPError, first_repeat
from ..formats import CRITEO_DERIVE, CRITEO_DERIVE_RULE
from ..io import file_sha256, lightfmp_kind, read_json, write_json_atomic
from ..schema import FIRST_ID, KINDS, OOV_ID, PAD_ID, TIME_DERIVES, Field, check_boundaries, check_spelling

EXPORT_VERSION = 2  # the newest this reads; 2: an input derives its values (`derive`): written only then, so that
#                     a reader of 1 refuses such an export instead of scoring raw values as they are
SCHEMA_FILE = "feature_schema.json"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
METADATA_KEY = "lightfmp.feature_schema"
OUTPUT_NAME = "probability"
TRITON_NAME = r"[A-Za-z0-9_-]{1,255}"  # a Triton model name here: a folder of the model repository (255 bytes at most)
BUCKETIZE_RULE = "id = first_id + count(boundaries <= x); NaN -> missing_id"
HASH_FUNCTION = "fnv1a64+splitmix64"
HASH_RULE = ("h = FNV-1a 64 over the value's UTF-8 bytes (offset 0xcbf29ce484222325, prime 0x100000001b3); "
             "h ^= h >> 30; h *= 0xbf58476d1ce4e5b9; h ^= h >> 27; h *= 0x94d049bb133111eb; h ^= h >> 31 "
             "(all mod 2^64); id = first_id + h % buckets; missing -> missing_id")


DERIVE_RULES = {CRITEO_DERIVE: CRITEO_DERIVE_RULE, TIME_DERIVE: TIME_DERIVE_RULE, DURATION_DERIVE: DURATION_DERIVE_RULE}


@dataclass
class Bucketize:
    """A numeric field's transform inside the graph: id = FIRST_ID + count(boundaries <= x), NaN -> OOV_ID."""
    boundaries: list[float]

    def to_dict(self) -> dict:
        return {"type": "bucketize", "boundaries": list(self.boundaries), "side": "right", "first_id": FIRST_ID,
                "missing_id": OOV_ID, "compare_dtype": "float32", "rule": BUCKETIZE_RULE}


@dataclass
class HashRule:
    """A hashed field's id rule (no vocabulary): FIRST_ID + stable_hash(value) % buckets; `spelling`: how the text
    it was trained on spells a typed value (`schema.SPELLINGS`; None for exports written before it was recorded)."""
    buckets: int
    spelling: dict[str, str] | None = None

    def to_dict(self) -> dict:
        d = {"function": HASH_FUNCTION, "buckets": self.buckets, "first_id": FIRST_ID, "missing_id": OOV_ID,
             "rule": HASH_RULE}
        if self.spelling is not None:
            d["spelling"] = dict(self.spelling)
        return d


@dataclass
class InputSpec:
    """One graph input: a kept field, its tensor type and how a raw value becomes the tensor's value."""
    name: str
    kind: str                           # categorical | numeric | multi_hot
    dtype: str                          # int64 | float32 | string (int32 only for graphs without lightfmp metadata)
    shape: list                         # ["batch"] or ["batch", max_len]
    vocab_size: int
    vocab_file: str | None = None       # relative to the export directory
    vocab_sha256: str | None = None
    transform: Bucketize | None = None  # numeric
    hash: HashRule | None = None        # hashed categorical / multi-hot
    separator: str | None = None        # multi-hot
    max_len: int = 0                    # multi-hot
    derive: str | None = None           # how the data file's raw value became the value encoded (CRITEO_DERIVE)

    @property
    def raw(self) -> bool:
        return self.dtype == "string"

    @property
    def width(self) -> int:
        """Values per row: max_len for a multi-hot field, else 1."""
        return int(self.shape[1]) if self.kind == "multi_hot" else 1

    @classmethod
    def from_field(cls, f: Field, raw: bool, derive: str | None = None) -> "InputSpec":
        if f.kind == "numeric":  # a Criteo count named --numeric: bucketized in derived values, so derived too
            return cls(f.name, f.kind, "float32", ["batch"], f.vocab_size,
                       transform=Bucketize(list(f.boundaries or [])), derive=derive)
        spec = cls(f.name, f.kind, "string" if raw else "int64",
                   ["batch", f.max_len] if f.kind == "multi_hot" else ["batch"], f.vocab_size,
                   separator=f.separator if f.kind == "multi_hot" else None,
                   max_len=f.max_len if f.kind == "multi_hot" else 0)
        spec.derive = derive
        if f.hashed:
            spec.hash = HashRule(f.hash_buckets, f.spelling)
        else:
            spec.vocab_file = f"vocab/{vocab_file_name(f.name)}"
            spec.vocab_sha256 = hashlib.sha256(vocab_text(f).encode()).hexdigest()
        return spec

    def field(self, vocab: list[str] | None = None) -> Field:
        """The schema field this input encodes (`vocab`: the tokens in id order, from the vocab file)."""
        return Field(self.name, self.kind, vocab=vocab, separator=self.separator, max_len=self.max_len,
                     boundaries=self.transform.boundaries if self.transform else None,
                     hash_buckets=self.hash.buckets if self.hash else None,
                     spelling=self.hash.spelling if self.hash else None,
                     derive=self.derive if self.derive in TIME_DERIVES else None)

    def to_dict(self) -> dict:
        d: dict = {"name": self.name, "kind": self.kind, "oov_id": OOV_ID, "padding_id": PAD_ID,
                   "vocab_size": self.vocab_size}
        if self.hash is not None:
            d["hash"] = self.hash.to_dict()
        if self.vocab_file is not None:
            d["vocab_file"] = self.vocab_file
        if self.vocab_sha256 is not None:
            d["vocab_sha256"] = self.vocab_sha256
        d.update(dtype=self.dtype, shape=list(self.shape))
        if self.transform is not None:
            d["transform"] = self.transform.to_dict()
        if self.kind == "multi_hot":
            d.update(separator=self.separator, max_len=self.max_len, pad_value="" if self.raw else PAD_ID)
        if self.raw:
            d["missing_value"] = ""
        if self.derive is not None:
            d["derive"] = {"type": self.derive, "rule": DERIVE_RULES[self.derive]}
        return d

    @classmethod
    def from_dict(cls, d, where: str) -> "InputSpec":
        """Parse one `inputs` entry; `where` ("FILE: inputs[i]") prefixes every error. The entry's other keys
        (the ids of padding, unknown and missing values, the pad value, a hash or bucketize rule's constants) are
        what lightfmp's encoding fixes: they must say so, since a client that reads them would encode by them."""
        spec = cls._parse(d, where)
        _as_written(d, spec.to_dict(), f"{where} ('{d['name']}')")
        return spec

    @classmethod
    def _parse(cls, d, where: str) -> "InputSpec":
        _require(isinstance(d, dict), f"{where}: expected an object, got {type(d).__name__}")
        missing = next((k for k in ("name", "kind", "dtype", "shape", "vocab_size") if k not in d), None)
        _require(missing is None, f"{where}: missing '{missing}'")
        where = f"{where} ('{d['name']}')"
        kind, dtype, shape = d["kind"], d["dtype"], d["shape"]
        _require(kind in KINDS, f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        allowed = ("float32",) if kind == "numeric" else ("int64", "string")
        _require(dtype in allowed, f"{where}: dtype {dtype!r} does not fit a {kind} field ({' or '.join(allowed)})")
        width = 2 if kind == "multi_hot" else 1
        _require(isinstance(shape, list) and len(shape) == width and (width == 1 or _is_int(shape[1])),
                 f"{where}: shape {shape!r} does not fit a {kind} field")
        _require(_is_int(d["vocab_size"]) and d["vocab_size"] >= FIRST_ID,
                 f"{where}: vocab_size {d['vocab_size']!r} must be an integer >= {FIRST_ID} (the padding and OOV ids "
                 f"come first)")
        spec = cls(str(d["name"]), kind, dtype, shape, int(d["vocab_size"]))
        if "derive" in d:
            kind_of = d["derive"].get("type") if isinstance(d["derive"], dict) else None
            _require(kind_of in DERIVE_RULES and kind != "multi_hot"
                     and (kind == "numeric" or kind_of == CRITEO_DERIVE),
                     f"{where}: derive {d['derive']!r:.80} is not one lightfmp writes (a categorical or numeric "
                     f"input's derive.type {CRITEO_DERIVE}, a numeric one's {' or '.join(TIME_DERIVES)})")
            spec.derive = kind_of
        if kind == "numeric":
            edges = d["transform"].get("boundaries") if isinstance(d.get("transform"), dict) else None
            _require(edges is not None, f"{where}: a numeric input needs transform.boundaries (a list of numbers)")
            check_boundaries(edges, f"{where}: transform")
            spec.transform = Bucketize([float(e) for e in edges])
            return spec
        if kind == "multi_hot":
            spec.separator, spec.max_len = d.get("separator"), int(shape[1])
            _require(isinstance(spec.separator, str) and spec.separator,
                     f"{where}: a multi_hot input needs a separator")
        if "hash" in d:
            buckets = d["hash"].get("buckets") if isinstance(d["hash"], dict) else None
            _require(_is_int(buckets) and buckets >= 1, f"{where}: hash.buckets {buckets!r} must be an integer >= 1")
            spelling = d["hash"].get("spelling")
            if spelling is not None:
                check_spelling(spelling, f"{where}: hash")
            spec.hash = HashRule(int(buckets), spelling)
        else:
            _require("vocab_file" in d, f"{where}: a {kind} input needs a vocab_file or a hash rule")
            spec.vocab_file = relative_path(d["vocab_file"], f"{where}: vocab_file")
            spec.vocab_sha256 = _sha(d.get("vocab_sha256"), f"{where}: vocab_sha256")
        return spec


def _as_written(given: dict, written: dict, where: str, path: str = "") -> None:
    """Every key of `given` that lightfmp writes holds the value it writes (nested objects key by key; the
    prose of a `rule` and keys lightfmp does not write are left alone)."""
    for key, value in given.items():
        if key not in written or key == "rule":
            continue
        if isinstance(value, dict) and isinstance(written[key], dict):
            _as_written(value, written[key], where, f"{path}{key}.")
        elif value != written[key] or (type(value) is bool) != (type(written[key]) is bool):
            raise LightFMPError(f"{where}: {path}{key} is {value!r} where lightfmp's encoding of this input gives "
                                f"{written[key]!r}; export again rather than edit how values are encoded")


@dataclass
class OutputSpec:
    name: str = OUTPUT_NAME
    dtype: str = "float32"
    shape: list = field(default_factory=lambda: ["batch"])


@dataclass
class ExternalData:
    """Weights stored beside model.onnx (ONNX external data) when they pass the protobuf size limit."""
    file: str
    sha256: str


@dataclass
class ServingContract:
    """Everything a serving system needs to call the exported model, as written to feature_schema.json."""
    inputs: list[InputSpec]
    output: OutputSpec = field(default_factory=OutputSpec)
    model_file: str = MODEL_FILE
    label: str = "label"
    input_mode: str = "ids"
    schema_version: int = 1
    dropped_fields: list[str] = field(default_factory=list)
    table_dtype: str | None = None
    opset: int | None = None
    backbone: str | None = None
    run_dir: str | None = None
    run_test_auc: float | None = None
    run_weights_sha256: str | None = None  # the run's model.safetensors at export: profile times that model only
    triton_model: str | None = None
    max_batch_size: int | None = None
    model_sha256: str | None = None
    external_data: ExternalData | None = None
    validation: dict | None = None

    @property
    def raw(self) -> bool:
        return self.input_mode == "raw"

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def metadata(self) -> dict:
        """The copy stored inside model.onnx: a file cannot hold its own hash, and validation runs on the saved
        file, so those parts are left out."""
        d = {k: getattr(self, k) for k in _METADATA}
        return {**d, "output": asdict(self.output), "inputs": [s.to_dict() for s in self.inputs],
                "dropped_fields": list(self.dropped_fields)}

    def to_dict(self) -> dict:
        d = {"model_sha256": self.model_sha256, "validation": self.validation,
             "external_data": asdict(self.external_data) if self.external_data is not None else None}
        return {**self.metadata(), **{k: d[k] for k in _FILE_ONLY if d[k] is not None}}

    @classmethod
    def from_dict(cls, d, source: str) -> "ServingContract":
        _require(isinstance(d, dict) and "inputs" in d and "model_file" in d,
                 f"{source}: not a lightfmp feature schema (needs 'inputs' and 'model_file')")
        version = d.get("schema_version", EXPORT_VERSION)
        _require(_is_int(version) and version <= EXPORT_VERSION,
                 f"{source}: schema_version {version!r} is newer than this lightfmp reads ({EXPORT_VERSION})")
        _require(isinstance(d["inputs"], list) and d["inputs"], f"{source}: 'inputs' must be a non-empty list")
        inputs = [InputSpec.from_dict(s, f"{source}: inputs[{i}]") for i, s in enumerate(d["inputs"])]
        twice = first_repeat(s.name for s in inputs)
        _require(twice is None, f"{source}: input '{twice}' is listed twice in 'inputs'")
        out = d.get("output")
        _require(isinstance(out, dict) and isinstance(out.get("name"), str), f"{source}: 'output' needs a 'name'")
        mode = d.get("input_mode", "ids")
        _require(mode in ("ids", "raw") and all(s.raw == (mode == "raw") for s in inputs if s.kind != "numeric"),
                 f"{source}: input_mode {mode!r} does not match the inputs' dtypes")
        name = d.get("triton_model")
        _require(name is None or isinstance(name, str) and re.fullmatch(TRITON_NAME, name),
                 f"{source}: triton_model {name!r} is not a model name (letters, digits, '_' and '-')")
        ext = d.get("external_data")
        if ext is not None:
            _require(isinstance(ext, dict) and "file" in ext, f"{source}: external_data needs a 'file'")
            ext = ExternalData(relative_path(ext["file"], f"{source}: external_data.file"),
                               _sha(ext.get("sha256"), f"{source}: external_data.sha256"))
        return cls(inputs=inputs, output=OutputSpec(out["name"], out.get("dtype", "float32"),
                                                    out.get("shape", ["batch"])),
                   model_file=relative_path(d["model_file"], f"{source}: model_file"),
                   label=str(d.get("label", "label")), input_mode=mode, schema_version=int(version),
                   dropped_fields=list(d.get("dropped_fields") or []), external_data=ext,
                   model_sha256=_sha(d.get("model_sha256"), f"{source}: model_sha256"),
                   run_weights_sha256=_sha(d.get("run_weights_sha256"), f"{source}: run_weights_sha256"),
                   **{k: d.get(k) for k in _PLAIN})


# feature_schema.json keys in order: metadata (also inside model.onnx), then those only the file holds; _PLAIN are
# read back as they are
_METADATA = ("schema_version", "model_file", "label", "output", "inputs", "dropped_fields", "input_mode",
             "table_dtype", "opset", "backbone", "run_dir", "run_test_auc", "run_weights_sha256", "triton_model",
             "max_batch_size")
_FILE_ONLY = ("model_sha256", "external_data", "validation")
_PLAIN = ("table_dtype", "opset", "backbone", "run_dir", "run_test_auc", "triton_model", "max_batch_size",
          "validation")


def input_spec(f: Field, raw: bool) -> dict:
    """One entry of feature_schema.json `inputs`, for schema field `f` (`raw`: string inputs)."""
    return InputSpec.from_field(f, raw).to_dict()


# ---- files --------------------------------------------------------------------------------------------------------
VOCAB_NAME_CHARS = 100  # of a field's name in its vocabulary's file name (file systems allow 255 bytes)


def vocab_file_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:VOCAB_NAME_CHARS] or "field"
    # a short hash keeps two names that sanitise (or shorten) alike apart
    return safe + ".json" if safe == name else f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}.json"


def vocab_text(f: Field) -> str:
    """The exact text of vocab/<field>.json: raw value string -> id (the recorded vocab_sha256 hashes it)."""
    return json.dumps(f.token_ids(), ensure_ascii=False)


def relative_path(value, what: str) -> str:
    """`value` if it names a file inside the export directory: relative, no '..', no drive."""
    if not isinstance(value, str) or not value:
        raise LightFMPError(f"{what} {value!r} must be a relative path inside the export directory")
    posix, win = PurePosixPath(value), PureWindowsPath(value)
    if posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts or ".." in win.parts:
        raise LightFMPError(f"{what} {value!r} must be a relative path inside the export directory")
    return value


def load_contract(export_dir: str | Path) -> ServingContract:
    """EXPORT/feature_schema.json, parsed and checked; every problem is one error naming the file."""
    path = Path(export_dir) / SCHEMA_FILE
    _require(path.is_file(), f"{export_dir}: not a lightfmp export (no {SCHEMA_FILE})")
    return ServingContract.from_dict(read_json(path, obj=False), str(path))


def locate_run(export_dir: str | Path, recorded) -> str | None:
    """The run directory an export came from (`recorded`: the contract's run_dir). feature_schema.json records only
    the run directory's name, never a path of the machine that exported it; a lightfmp run of that name is looked
    for next to the export directory, then in the folders beside the export's folder (runs/NAME for export/NAME,
    used only when exactly one matches; two or more are an error naming them), else the name is taken relative to
    the working directory. A path recorded by an older lightfmp is used as is."""
    if not isinstance(recorded, str) or not recorded or Path(recorded).is_absolute():
        return recorded if isinstance(recorded, str) and recorded else None
    # the folder as written, made absolute (`full` given from inside export/: its parent is export/, not .), then,
    # where a link leads elsewhere, where it leads
    for where in dict.fromkeys([Path(os.path.abspath(export_dir)), Path(os.path.realpath(export_dir))]):
        near = where.parent / recorded
        if lightfmp_kind(near) == "run":
            return str(near)
        found = {}  # one entry per run folder, however many links lead to it
        for p in sorted(where.parent.parent.glob(f"*/{glob.escape(recorded)}")):
            if lightfmp_kind(p) == "run":
                found.setdefault(p.resolve(), p)
        beside = list(found.values())
        if len(beside) > 1:
            raise LightFMPError(f"run '{recorded}': {len(beside)} lightfmp runs of that name beside "
                                f"{where.parent} ({', '.join(str(p) for p in beside)}); none is guessed")
        if beside:
            return str(beside[0])
    return recorded


def save_contract(contract: ServingContract, export_dir: str | Path) -> None:
    write_json_atomic(Path(export_dir) / SCHEMA_FILE, contract.to_dict())


def inside(export_dir: Path, rel: str) -> Path:
    """The path of a contract file, refused when it leaves the export directory (also through a symlink)."""
    root = export_dir.resolve()
    p = export_dir / relative_path(rel, f"{export_dir / SCHEMA_FILE}: path")
    _require(root in p.resolve().parents, f"{p}: resolves outside the export directory {export_dir}")
    return p


def verify_files(export_dir: str | Path, contract: ServingContract) -> None:
    """Every file the contract names exists inside `export_dir` and has the sha256 recorded for it."""
    d = Path(export_dir)
    checks = [(contract.model_file, contract.model_sha256)]
    if contract.external_data is not None:
        checks.append((contract.external_data.file, contract.external_data.sha256))
    checks += [(s.vocab_file, s.vocab_sha256) for s in contract.inputs if s.vocab_file is not None]
    for rel, want in checks:
        p = inside(d, rel)
        _require(p.is_file(), f"{p}: missing from the export")
        check_sha256(p, want)
    # the Triton entry's copy of the model (the file Triton loads), where it is there: the same bytes (its
    # config.pbtxt is the user's to tune, and so is the entry: another backend's files in its place are not checked)
    version = d / "triton" / contract.triton_model / "1" if contract.triton_model else None
    for rel, want in checks[:2 if contract.external_data is not None else 1] if version is not None else []:
        copy = version / Path(rel).name
        if copy.is_file():
            check_sha256(copy, want)


def check_sha256(p: Path, want: str | None) -> None:
    """`p` still has the sha256 the contract records for it (None: nothing recorded)."""
    _require(want is None or file_sha256(p) == want,
             f"{p}: sha256 differs from {SCHEMA_FILE} (the file was changed or replaced)")


def _require(ok, error: str) -> None:
    if not ok:
        raise LightFMPError(error)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _sha(v, what: str) -> str | None:
    _require(v is None or isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v),
             f"{what} {v!r} is not a sha256 hex digest")
    return v


__all__ = ["ServingContract", "InputSpec", "input_spec", "OutputSpec", "Bucketize", "HashRule", "ExternalData",
           "load_contract", "locate_run", "save_contract", "verify_files", "check_sha256", "vocab_file_name", "vocab_text",
           "relative_path", "inside", "SCHEMA_FILE", "MODEL_FILE", "EXTERNAL_DATA_FILE", "METADATA_KEY", "OUTPUT_NAME",
           "EXPORT_VERSION"]
