"""A minimal serving client for a `lightfmp export` directory: only onnxruntime, numpy and json (no torch, no
lightfmp), to show that feature_schema.json and vocab/ are all a serving system needs:

    python examples/serve_onnx.py EXPORT_DIR records.jsonl   # one JSON object per line; '-' reads stdin
    python examples/serve_onnx.py EXPORT_DIR                 # a few made-up records from the vocabularies

Prints one JSON line per record: {"probability": p} (with the made-up records, {"record": ..., "probability": p}). Records are encoded as `lightfmp.serving.Predictor` does:
a key absent from some records is a missing value, a kept field absent from every record is an error; multi-hot
values may be text or a list of tokens; True / False are the categories 'True' / 'False' or 'true' / 'false'
(whichever the vocabulary, or a hashed field's recorded spelling, holds) and no number. The
files must be the ones the export wrote (sha256 in feature_schema.json) and inside EXPORT_DIR. Any problem is
one line on stderr and exit status 2.
"""
import datetime
import hashlib
import json
import math
import re
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import onnxruntime as ort

MASK = (1 << 64) - 1


class ServeError(ValueError):
    """A bad export directory or a bad record; the message is one line."""


def file_in(d, rel, want_sha256):
    """d/rel, refused when it leaves d or its sha256 differs from the one recorded in feature_schema.json."""
    p = d / str(rel)
    if not isinstance(rel, str) or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts \
            or ":" in rel or "\\" in rel or d.resolve() not in p.resolve().parents:
        raise ServeError(f"{d / 'feature_schema.json'}: path {rel!r} must be a relative path inside the export")
    if not p.is_file():
        raise ServeError(f"{p}: missing from the export")
    if want_sha256 is not None and hashlib.sha256(p.read_bytes()).hexdigest() != want_sha256:
        raise ServeError(f"{p}: sha256 differs from feature_schema.json (the file was changed or replaced)")
    return p


def missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def token(s, v, known):
    """A scalar value's text as training keyed it: of the texts training may have keyed it by, the first the
    vocabulary holds, else the first. True or 'true' (a CSV's text); 24 or 24.0 (pandas writes an integer column
    with gaps as 24.0); 0.2 or '0.20000000298023224' (a float32 column's value, as its float64 text; a float16
    column's likewise)."""
    if missing(v) or v == "" and s.get("hash", {}).get("spelling", {}).get("empty") == "missing":
        return None  # a hashed field trained on text, where an empty cell is missing: '' is missing too
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        texts = [str(v), str(v).lower()]
    elif isinstance(v, int) or isinstance(v, float) and v.is_integer():
        try:
            texts = [str(int(v)), str(float(v))]
        except OverflowError:
            texts = [str(int(v))]
    elif isinstance(v, float):
        texts = [str(v)]
        with np.errstate(over="ignore"):
            for narrow in (np.float32(v), np.float16(v)):  # a float32 / float16 column's text, longer than needed
                if np.isfinite(narrow) and digits(str(float(narrow))) >= 10:
                    texts.append(str(float(narrow)))
            if np.isfinite(np.float32(v)):
                texts.append(str(np.float32(v)))  # and float32's own shortest text: 0.20000000298023224 -> '0.2'

    else:
        kind = s["kind"].replace("_", "-")
        raise ServeError(f"field '{s['name']}' ({kind}) got {v!r} ({type(v).__name__}); expected a string or "
                         f"number")
    return next((t for t in texts if t in known), texts[0])


# how a text file spells a missing number, as training reads it (lightfmp.encoding.MISSING_TEXT; a test keeps them equal)
MISSING_TEXT = ("nan", "NaN", "NAN", "-nan", "-NaN", "NA", "N/A", "n/a", "#N/A", "<NA>", "NULL", "null", "None")


def number(s, v):
    """A numeric value as training reads it. Text is read as pandas reads a number: Python's float() also reads
    `1_000`, non-ASCII digits and NaN spelled otherwise than MISSING_TEXT (`+nan`), which training refuses."""
    if missing(v) or (isinstance(v, str) and (not v.strip() or v.strip() in MISSING_TEXT)):
        return math.nan
    try:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str) and v.isascii() and "_" not in v and not math.isnan(float(v)):
            return float(v)
    except (ValueError, OverflowError):
        pass
    raise ServeError(f"field '{s['name']}' is numeric but got {v!r} ({type(v).__name__})")


def derived(s, v):
    """A value the model reads derived from the data file's raw value, as training derived it (`derive` in
    feature_schema.json). criteo_log_square: a count v > 2 becomes floor(ln(v)^2) as text, others their text.
    seconds_since_1970_utc: ISO 8601 text becomes its seconds (a time without a zone read as UTC), a number stays;
    seconds_of_duration: a duration is its seconds already."""
    if "derive" not in s:
        return v
    if missing(v) or v == "":
        return None
    kind = s["derive"]["type"]
    if kind in ("seconds_since_1970_utc", "seconds_of_duration"):
        try:
            return number(s, v)  # a number, its text or a missing value, by the numeric rule
        except ServeError:
            if not isinstance(v, str):
                raise
        try:
            if kind != "seconds_since_1970_utc":
                raise ValueError(v)
            t = datetime.datetime.fromisoformat(v.strip())
        except ValueError:
            raise ServeError(f"field '{s['name']}' takes " + ("a time (ISO 8601 text, or its seconds since 1970 UTC)"
                             if kind == "seconds_since_1970_utc" else "a duration as its seconds") + f"; got {v!r}") \
                from None
        return (t if t.tzinfo is not None else t.replace(tzinfo=datetime.timezone.utc)).timestamp()
    if kind != "criteo_log_square":
        raise ServeError(f"field '{s['name']}': unknown derive type {kind!r}")
    try:  # text as training reads it: ASCII digits, no '_' (Python's int() and float() also take '1_000', '٣')
        x = int(v) if isinstance(v, str) and re.fullmatch(r"-?[0-9]+", v) else v
        if isinstance(x, str):
            if not x.isascii() or "_" in x:
                raise ValueError
            x = float(x)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)) \
                or not float(x).is_integer():
            raise ValueError
    except (ValueError, OverflowError):
        raise ServeError(f"field '{s['name']}' (a Criteo count) got {v!r}; expected an integer") from None
    return str(int(math.floor(math.log(x) ** 2)) if x > 2 else int(x))


def joined(s, v, known):
    """A multi-hot value's text: a list of tokens joined by the field's separator, or a scalar as `token` reads it."""
    if not isinstance(v, list):
        return token(s, v, known)
    bad = [t for t in v if not isinstance(t, (str, int)) or isinstance(t, bool)]
    if bad:
        raise ServeError(f"field '{s['name']}' (multi-hot) got token {bad[0]!r} ({type(bad[0]).__name__}) in {v!r}")
    return s["separator"].join(t if isinstance(t, str) else token(s, t, known) for t in v)


def each(values, convert):
    """convert(v) for every record's value; a refusal names the record."""
    out = []
    for i, v in enumerate(values):
        try:
            out.append(convert(v))
        except ServeError as e:
            raise ServeError(f"record {i}, {e}") from None
    return out


def digits(text):
    """A number text's significant digits: from 10, a float32 value's float64 text is longer than it needs."""
    return len(re.sub(r"[-+.]", "", re.split(r"[eE]", text)[0]).lstrip("0"))


class Spelled:
    """A hashed field's recorded spelling as `token` looks it up: '16' or '16.0', 'True' or 'true', and a fraction
    as written ('0.2') or as a float32 column's float64 text ('0.20000000298023224')."""

    def __init__(self, spelling):
        self.whole, self.bool, self.fraction = spelling["whole"], spelling["bool"], spelling.get("fraction")

    def __contains__(self, text):
        if re.fullmatch(r"-?[0-9]+(\.0)?", text):
            return text.endswith(".0") == self.whole.endswith(".0")
        if text in ("True", "False", "true", "false"):
            return text[0].islower() == self.bool[0].islower()
        if self.fraction and re.fullmatch(r"-?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?", text):
            with np.errstate(over="ignore"):
                exact = float(np.float32(float(text))) == float(text)  # a float32 value
            return exact if self.fraction == "0.20000000298023224" else not (exact and digits(text) >= 10)
        return True


def hashed_id(text, rule):
    """The hash rule of feature_schema.json: FNV-1a 64 then the splitmix64 finaliser, mod buckets."""
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & MASK
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK
    h ^= h >> 31
    return rule["first_id"] + h % rule["buckets"]


def read_vocab(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ServeError(f"{path}: cannot read it ({type(e).__name__})") from None


def check_shape(schema, where):
    """The keys every use of the schema reads, of the types it reads them as."""
    inputs = schema.get("inputs") if isinstance(schema, dict) else None
    ok = isinstance(schema, dict) and type(schema.get("schema_version", 1)) is int \
        and isinstance(inputs, list) and all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                             and isinstance(s.get("kind"), str) for s in inputs) \
        and isinstance(schema.get("model_file"), str) and isinstance(schema.get("output"), dict) \
        and isinstance(schema["output"].get("name"), str)
    if not ok:
        raise ServeError(f"{where}: not a feature schema this client reads (an object with an integer "
                         f"schema_version, inputs each with a name and kind, model_file, output.name)")


class Client:
    def __init__(self, export_dir):
        d = Path(export_dir)
        try:
            self.schema = json.loads((d / "feature_schema.json").read_text())
        except (OSError, ValueError) as e:
            raise ServeError(f"{d / 'feature_schema.json'}: cannot read it ({type(e).__name__})") from None
        check_shape(self.schema, d / "feature_schema.json")
        if self.schema.get("schema_version", 1) > 2:  # a newer contract may encode in ways this client does not
            raise ServeError(f"{d / 'feature_schema.json'}: schema_version {self.schema['schema_version']} is newer "
                             f"than this client reads (2)")
        self.raw = self.schema.get("input_mode") == "raw"
        self.vocab = {s["name"]: read_vocab(file_in(d, s["vocab_file"], s.get("vocab_sha256")))
                      for s in self.schema["inputs"] if "vocab_file" in s}
        if "external_data" in self.schema:
            file_in(d, self.schema["external_data"]["file"], self.schema["external_data"].get("sha256"))
        model = file_in(d, self.schema["model_file"], self.schema.get("model_sha256"))
        self.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        graph = sorted(i.name for i in self.session.get_inputs())  # the schema must describe this graph
        if graph != sorted(s["name"] for s in self.schema["inputs"]) or \
                self.schema["output"]["name"] not in [o.name for o in self.session.get_outputs()]:
            raise ServeError(f"{d / 'feature_schema.json'}: its inputs / output do not match {model.name}'s "
                             f"(the graph reads {', '.join(graph)})")

    def ids(self, s, tokens):
        if self.raw:
            return ["" if t is None else t for t in tokens]
        if "hash" in s:
            return [s["oov_id"] if t is None else hashed_id(t, s["hash"]) for t in tokens]
        return [self.vocab[s["name"]].get(t, s["oov_id"]) for t in tokens]

    def encode(self, records):
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise ServeError(f"record {i} is not a dict but {type(r).__name__}")
        names = [s["name"] for s in self.schema["inputs"]]
        absent = [n for n in names if not any(n in r for r in records)]
        if absent:
            raise ServeError(f"records lack column(s) {', '.join(repr(n) for n in absent)} that the model reads "
                             f"(kept fields: {', '.join(names)})")
        feeds = {}
        for s in self.schema["inputs"]:
            name, kind, known = s["name"], s["kind"], self.vocab.get(s["name"], {})
            if "hash" in s and "spelling" in s["hash"]:  # no vocabulary: the spelling the training text used
                known = Spelled(s["hash"]["spelling"])
            values = each([r.get(name) for r in records], lambda v: derived(s, v))
            if kind == "numeric":  # the graph bucketizes; missing is NaN
                feeds[name] = np.array(each(values, lambda v: number(s, v)), np.float32)
            elif kind == "categorical":
                feeds[name] = np.array(self.ids(s, each(values, lambda v: token(s, v, known))),
                                       dtype=object if self.raw else np.int64)
            else:  # multi_hot: "a|b" or a list of tokens, truncated / padded to max_len slots
                width, sep, rows = s["shape"][1], s["separator"], []
                for text in each(values, lambda v: joined(s, v, known)):
                    toks = self.ids(s, [t for t in (text or "").split(sep) if t][:width])
                    rows.append(toks + [s["pad_value"]] * (width - len(toks)))
                feeds[name] = np.array(rows, dtype=object if self.raw else np.int64).reshape(len(records), width)
        return feeds

    def predict(self, records):
        if not records:
            return np.zeros(0, np.float32)
        return self.session.run([self.schema["output"]["name"]], self.encode(records))[0]


def made_up_records(schema, vocab, n=3):
    recs = []
    for i in range(n):
        r = {}
        for s in schema["inputs"]:
            if s["kind"] == "numeric":
                b = s["transform"]["boundaries"] or [0.0]
                r[s["name"]] = b[min(i * len(b) // n, len(b) - 1)]
            else:
                toks = list(vocab.get(s["name"], {})) or ["unseen"]
                tok = toks[min(i, len(toks) - 1)]
                r[s["name"]] = tok if s["kind"] == "categorical" else s["separator"].join(toks[: i + 1])
        recs.append(r)
    return recs


def read_line(line, n, source):
    try:
        return json.loads(line)
    except ValueError as e:
        raise ServeError(f"{'stdin' if source == '-' else source}, line {n}: not JSON ({e})") from None


def main(argv):
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        client = Client(argv[0])
        if len(argv) > 1:
            fh = sys.stdin if argv[1] == "-" else open(argv[1], encoding="utf-8")
            try:
                records = [read_line(line, n, argv[1]) for n, line in enumerate(fh, 1) if line.strip()]
            except UnicodeDecodeError:
                raise ServeError(f"{'stdin' if argv[1] == '-' else argv[1]}: not UTF-8 text") from None
        else:
            records = made_up_records(client.schema, client.vocab)
        probs = client.predict(records)
    except (ServeError, OSError) as e:
        text = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else str(e)
        print(f"error: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
        return 2
    for rec, p in zip(records, probs):
        print(json.dumps({"record": rec, "probability": float(p)}) if len(argv) == 1 else
              json.dumps({"probability": float(p)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
