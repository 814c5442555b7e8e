"""Small generated data for the tests (no files shipped, nothing downloaded)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from lightfmp.cli.app import app

runner = CliRunner()


def rewrite_metrics(run, m: dict, name: str = "metrics") -> None:
    """The metrics.json (or `name`.json: history) of the run directory `run` replaced by `m`, with run.json's record
    of its sha256 to match: a run whose own record says `m` (as if lightfmp had written it so), for the checks
    downstream of the file's integrity (an edit alone is refused by that record)."""
    import hashlib
    import json
    from pathlib import Path
    run = Path(run)
    (run / f"{name}.json").write_text(json.dumps(m))
    info = json.loads((run / "run.json").read_text())
    info[f"{name}_sha256"] = hashlib.sha256((run / f"{name}.json").read_bytes()).hexdigest()
    (run / "run.json").write_text(json.dumps(info))


def cli(*args):
    """`lightfmp ARGS` in this process (each arg converted to text)."""
    return runner.invoke(app, [str(a) for a in args])


def unwarned(output: str) -> str:
    """`output` without its warning lines (printed with --quiet too: a tiny table's phase 1 smaller than a batch)."""
    return "\n".join(line for line in output.splitlines() if not line.startswith("warning: "))


def one_line_error(r, *words):
    """Exit 2, a single line on the output besides any warning, no traceback, and every word in it."""
    lines = unwarned(r.output).strip().splitlines()
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for w in words:
        assert str(w) in lines[0], (w, lines[0])
    return lines[0]


def make_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A planted CTR table: 'a' and 'b' carry the signal, 'noise' does not; plus an int, a float and a list."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 8, n)
    b = rng.integers(0, 12, n)
    eff_a = np.linspace(-2, 2, 8)
    eff_b = np.linspace(-1.5, 1.5, 12)[rng.permutation(12)]
    x = rng.normal(size=n)
    logit = eff_a[a] + eff_b[b] + 0.5 * x - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    tags = ["|".join(rng.choice(list("pqrs"), size=rng.integers(0, 3), replace=False)) for _ in range(n)]
    return pd.DataFrame({"a": [f"a{v}" for v in a], "b": b, "noise": [f"z{v}" for v in rng.integers(0, 30, n)],
                         "x": x, "tags": tags, "label": y})


def fitted_frame(n: int):
    """`make_frame(n)`'s fields (two categorical, a noise one, a number, a multi-hot list) fitted on it, and its ids."""
    import torch

    from lightfmp.schema import FeatureSchema, Field
    from lightfmp.vocab import fit_schema
    df = make_frame(n)
    s = fit_schema(FeatureSchema("label", [Field("a", "categorical"), Field("b", "categorical"),
                                           Field("noise", "categorical"), Field("x", "numeric"),
                                           Field("tags", "multi_hot", separator="|")], min_count=1), df)
    return s, torch.from_numpy(s.encode(df)).long()


def write_csv(tmp_path, n: int = 600, seed: int = 0, name: str = "data.csv"):
    p = tmp_path / name
    make_frame(n, seed).to_csv(p, index=False)
    return p


def fnv_reference(text: str) -> int:
    """The documented hash of hashed fields (FNV-1a 64 then a splitmix64 finaliser), one byte at a time in Python."""
    m, h = (1 << 64) - 1, 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & m
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & m
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & m
    return h ^ (h >> 31)


def record_steps(monkeypatch) -> tuple[list, list]:
    """Patch the training loop to record what each step reads: (the ids of every gate step's batch, the row count
    of every weight step), appended as `fit` runs."""
    from lightfmp import training
    gate_batches, weight_steps = [], []
    real_gate, real_train = training.Trainer.gate_step, training.Trainer.train_step

    def gate_step(self, ids, y, progress, noise):
        gate_batches.append(ids.copy())
        return real_gate(self, ids, y, progress, noise)

    def train_step(self, ids, y, progress, noise):
        weight_steps.append(len(y))
        return real_train(self, ids, y, progress, noise)
    monkeypatch.setattr(training.Trainer, "gate_step", gate_step)
    monkeypatch.setattr(training.Trainer, "train_step", train_step)
    return gate_batches, weight_steps


def without_flag(args, flag: str) -> list:
    """`args` less `flag` and its value: a list flag given twice is refused, so a test's override replaces it."""
    args = list(args)
    i = args.index(flag)
    return args[:i] + args[i + 2:]


def fake_passes(loss_of):
    """A stand-in for ClosedFields whose per-row losses are `loss_of(closed or open set)` of the state's set."""
    class FakePasses:
        def __init__(self, *a, **k):
            self.toggled = set()

        def losses(self, f=None):
            return loss_of(self.toggled ^ ({f} if f is not None else set()))

        def toggle(self, f):
            self.toggled ^= {f}
    return FakePasses
