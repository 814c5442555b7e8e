"""A minimal serving client for a `lightfmp export` directory: only onnxruntime, numpy and json.

It shows that feature_schema.json and vocab/ are all a serving system needs (no torch, no lightfmp):

    python examples/serve_onnx.py EXPORT_DIR records.jsonl   # one JSON object per line; '-' reads stdin
    python examples/serve_onnx.py EXPORT_DIR                 # a few made-up records from the vocabularies

Prints one JSON line per record: {"probability": p}.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def cell_text(v):
    """A value's string form as in a CSV cell: 24.0 -> '24', True -> 'True'; None / NaN -> None (missing)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return v if isinstance(v, str) else str(v)


class Client:
    def __init__(self, export_dir):
        d = Path(export_dir)
        self.schema = json.loads((d / "feature_schema.json").read_text())
        self.raw = self.schema.get("input_mode") == "raw"
        self.vocab = {s["name"]: json.loads((d / s["vocab_file"]).read_text())
                      for s in self.schema["inputs"] if "vocab_file" in s}
        self.session = ort.InferenceSession(str(d / self.schema["model_file"]), providers=["CPUExecutionProvider"])

    def encode(self, records):
        feeds = {}
        for s in self.schema["inputs"]:
            name, kind = s["name"], s["kind"]
            values = [r.get(name) for r in records]
            if kind == "numeric":
                # the graph bucketizes; missing is NaN
                feeds[name] = np.array([np.nan if cell_text(v) is None else float(v) for v in values], np.float32)
            elif kind == "categorical":
                texts = [cell_text(v) for v in values]
                if self.raw:
                    feeds[name] = np.array([t if t is not None else "" for t in texts], dtype=object)
                else:
                    feeds[name] = np.array([self.vocab[name].get(t, s["oov_id"]) for t in texts], np.int64)
            else:  # multi_hot: "a|b" or a list of tokens, truncated / padded to max_len slots
                width = s["shape"][1]
                pad = "" if self.raw else s["padding_id"]
                rows = []
                for v in values:
                    text = cell_text(v) if not isinstance(v, list) else s["separator"].join(map(str, v))
                    toks = [t for t in (text or "").split(s["separator"]) if t][:width]
                    ids = toks if self.raw else [self.vocab[name].get(t, s["oov_id"]) for t in toks]
                    rows.append(ids + [pad] * (width - len(ids)))
                feeds[name] = np.array(rows, dtype=object if self.raw else np.int64).reshape(len(records), width)
        return feeds

    def predict(self, records):
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
                toks = list(vocab[s["name"]]) or ["unseen"]
                tok = toks[min(i, len(toks) - 1)]
                r[s["name"]] = tok if s["kind"] == "categorical" else s["separator"].join(toks[: i + 1])
        recs.append(r)
    return recs


def main(argv):
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    client = Client(argv[0])
    if len(argv) > 1:
        fh = sys.stdin if argv[1] == "-" else open(argv[1])
        records = [json.loads(line) for line in fh if line.strip()]
    else:
        records = made_up_records(client.schema, client.vocab)
    for rec, p in zip(records, client.predict(records)):
        print(json.dumps({"record": rec, "probability": float(p)}) if len(argv) == 1 else
              json.dumps({"probability": float(p)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
