"""Synthetic CTR data with a known ground truth, for testing feature pruning.

Each categorical field is one of:
  * informative: its values carry a main effect on the logit and take part in
    pairwise (factorised, FM-like) interactions with the other informative fields;
  * redundant: a relabelled deterministic function of one informative field
    (random permutation of its ids, with the rare tail sometimes merged in pairs),
    so it carries (nearly) the same signal as its source;
  * noise: independent of the label (some of them high-cardinality).
Numeric fields: one (when informative >= 2) adds a smooth non-linear term to
the logit and counts as informative; the others are noise.

The truth is written to ``truth.json`` next to the data so that pruning results
can be scored against it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

__all__ = ["synthesize"]

_CHUNK = 131_072  # rows generated and written per step: bounds memory
_CAL_ROWS = 100_000  # rows used to calibrate the interaction scale and the bias
_TARGET_CTR = 0.27
_MAIN_VAR = 2.0  # total variance of the main effects of categorical informative fields
_INTER_STD = 1.0  # std of the summed interaction terms
_NUM_EFFECT = "0.8*tanh(1.5*z) - 0.3*(z**2 - 1), z = (x - 5) / 2"
_LATENT_DIM = 4
_NOISE_STD = 0.3  # extra logit noise on top of the Bernoulli draw


def _zipf_cdf(vocab: int, alpha: float) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** alpha
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    cdf[-1] = 1.0  # guard searchsorted against rounding past the end
    return cdf


def _zipf_probs(cdf: np.ndarray) -> np.ndarray:
    return np.diff(cdf, prepend=0.0)


def _log_uniform_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))


class _Field:
    """How one categorical field is generated. ``rank`` ids are Zipf ranks (0 = most
    frequent); ``label_of`` maps ranks to the written value ids so that the id
    number says nothing about frequency."""

    def __init__(self, name: str, kind: str, vocab: int, alpha: float, label_of: np.ndarray,
                 source: "_Field | None" = None, rank_map: np.ndarray | None = None):
        self.name = name
        self.kind = kind
        self.vocab = vocab
        self.alpha = alpha
        self.cdf = _zipf_cdf(vocab, alpha) if source is None else None
        self.label_of = label_of
        self.source = source  # redundant copies take their ranks from the source
        self.rank_map = rank_map
        self.dictionary = pa.array([f"v{i}" for i in range(len(label_of))], type=pa.string())


def _plan(fields, informative, redundant, numeric):
    n_cat = fields - numeric
    # a numeric informative field only when at least one categorical informative is left
    num_inf = 1 if (numeric >= 1 and informative >= 2) else 0
    k_cat = informative - num_inf
    if k_cat > n_cat:
        raise ValueError(f"informative={informative} needs {k_cat} categorical fields but only "
                         f"{n_cat} exist (fields - numeric); at most one numeric field is informative")
    free = n_cat - k_cat
    if redundant is None:
        redundant = min(informative, free) if k_cat > 0 else 0
    if redundant < 0 or redundant > free:
        raise ValueError(f"redundant={redundant} must be in [0, {free}]")
    if redundant > 0 and k_cat == 0:
        raise ValueError("redundant copies need at least one categorical informative field")
    return n_cat, num_inf, k_cat, redundant


def synthesize(rows: int, fields: int, informative: int, out_dir, seed: int = 0,
               redundant: int | None = None, numeric: int = 2, fmt: str = "parquet") -> dict:
    """Write ``out_dir/data.parquet`` (or ``data.csv``) and ``out_dir/truth.json``.

    ``fields`` counts every feature column (categorical ``f00..`` plus numeric ``n0..``);
    informative + redundant + noise == fields. ``redundant`` defaults to
    min(informative, categorical slots left). Returns the truth dict; its
    ``data_file`` is an absolute path, while truth.json stores it relative to
    out_dir (so the json bytes do not depend on where it was written).
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    if rows <= 0 or fields <= 0 or informative < 0 or numeric < 0 or numeric > fields:
        raise ValueError("need rows > 0, fields > 0, informative >= 0 and 0 <= numeric <= fields")
    if informative > fields:
        raise ValueError(f"informative={informative} > fields={fields}")
    rng = np.random.default_rng(seed)
    n_cat, num_inf, k_cat, redundant = _plan(fields, informative, redundant, numeric)
    n_noise_cat = n_cat - k_cat - redundant

    # shuffle roles over column positions so that the index carries no information
    width = max(2, len(str(n_cat - 1)))
    cat_names = [f"f{i:0{width}d}" for i in range(n_cat)]
    roles = np.array(["inf"] * k_cat + ["red"] * redundant + ["noise"] * n_noise_cat)
    roles = roles[rng.permutation(n_cat)]
    num_names = [f"n{i}" for i in range(numeric)]
    num_roles = np.array(["inf"] * num_inf + ["noise"] * (numeric - num_inf))
    num_roles = num_roles[rng.permutation(numeric)] if numeric else num_roles

    inf_fields: list[_Field] = []
    by_name: dict[str, _Field] = {}
    for name, role in zip(cat_names, roles):
        if role == "inf":
            # moderate cardinality: learnable from a modest sample
            vocab = _log_uniform_int(rng, 5, 2_000)
            alpha = rng.uniform(1.0, 1.3)
            f = _Field(name, "informative", vocab, alpha, rng.permutation(vocab))
            inf_fields.append(f)
            by_name[name] = f
    noise_names = [n for n, r in zip(cat_names, roles) if r == "noise"]
    for j, name in enumerate(noise_names):
        # the first two noise fields are high-cardinality traps for memorising models
        vocab = (100_000, 50_000)[j] if j < 2 else _log_uniform_int(rng, 5, 20_000)
        alpha = rng.uniform(1.0, 1.3) if j >= 2 else rng.uniform(0.8, 1.0)
        by_name[name] = _Field(name, "noise", vocab, alpha, rng.permutation(vocab))
    red_names = [n for n, r in zip(cat_names, roles) if r == "red"]
    for j, name in enumerate(red_names):
        src = inf_fields[j % len(inf_fields)]
        ranks = np.arange(src.vocab)
        if rng.random() < 0.5:
            # merge the rare half of the ranks in pairs: still a function of the source
            head = (src.vocab + 1) // 2
            ranks = np.where(ranks < head, ranks, head + (ranks - head) // 2)
        vocab = int(ranks.max()) + 1
        f = _Field(name, "redundant", vocab, src.alpha, rng.permutation(vocab), source=src,
                   rank_map=ranks)
        by_name[name] = f

    # main effects, exactly centred and scaled under each field's Zipf distribution
    main_sd = np.sqrt(_MAIN_VAR / k_cat) if k_cat else 0.0
    effects, latents = {}, {}
    for f in inf_fields:
        p = _zipf_probs(f.cdf)
        w = rng.normal(size=f.vocab)
        w -= p @ w
        w *= main_sd / np.sqrt(max(p @ (w * w), 1e-12))
        effects[f.name] = w
        latents[f.name] = rng.normal(size=(f.vocab, _LATENT_DIM))
    pairs = [(a.name, b.name) for i, a in enumerate(inf_fields) for b in inf_fields[i + 1:]]
    num_inf_name = next((n for n, r in zip(num_names, num_roles) if r == "inf"), None)

    def draw(g: np.random.Generator, n: int):
        ranks = {}
        for name in cat_names:
            f = by_name[name]
            if f.source is None:
                ranks[name] = np.searchsorted(f.cdf, g.random(n), side="right").astype(np.int32)
        for name in red_names:
            f = by_name[name]
            ranks[name] = f.rank_map[ranks[f.source.name]].astype(np.int32)
        nums = {}
        for name, role in zip(num_names, num_roles):
            if role == "inf":
                nums[name] = np.round(g.normal(5.0, 2.0, size=n), 5)
            else:
                nums[name] = np.round(g.lognormal(1.0, 0.8, size=n), 5)
        return ranks, nums

    def logit_parts(ranks, nums, n):
        main = np.zeros(n)
        for f in inf_fields:
            main += effects[f.name][ranks[f.name]]
        inter = np.zeros(n)
        for a, b in pairs:
            inter += np.einsum("ij,ij->i", latents[a][ranks[a]], latents[b][ranks[b]])
        if num_inf_name is not None:
            z = (nums[num_inf_name] - 5.0) / 2.0
            main += 0.8 * np.tanh(1.5 * z) - 0.3 * (z * z - 1.0)
        return main, inter

    # calibrate on its own stream so the data rows do not depend on the calibration size
    cal_rng = np.random.default_rng([seed, 1])
    cal_n = min(_CAL_ROWS, max(rows, 20_000))
    c_ranks, c_nums = draw(cal_rng, cal_n)
    c_main, c_inter = logit_parts(c_ranks, c_nums, cal_n)
    inter_shift = float(c_inter.mean()) if pairs else 0.0
    inter_scale = _INTER_STD / float(c_inter.std()) if pairs and c_inter.std() > 0 else 0.0
    c_logit = c_main + (c_inter - inter_shift) * inter_scale
    c_logit += cal_rng.normal(0.0, _NOISE_STD, size=cal_n)
    bias = _solve_bias(c_logit, _TARGET_CTR)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_name = "data.parquet" if fmt == "parquet" else "data.csv"
    data_path = out_dir / data_name
    tmp_path = out_dir / (data_name + ".tmp")

    str_type = pa.string()
    schema = pa.schema([pa.field(c, str_type) for c in cat_names]
                       + [pa.field(c, pa.float64()) for c in num_names]
                       + [pa.field("label", pa.int64())])
    writer = sink = None
    data_rng = np.random.default_rng([seed, 2])
    positives = 0
    try:
        if fmt == "parquet":
            # store_schema=False: no arrow schema blob, strings read back as plain strings
            writer = pq.ParquetWriter(tmp_path, schema, compression="snappy", store_schema=False)
        else:
            # header written by hand: arrow would quote the names
            sink = open(tmp_path, "wb")
            sink.write((",".join(schema.names) + "\n").encode())
            writer = pacsv.CSVWriter(sink, schema, write_options=pacsv.WriteOptions(
                include_header=False, quoting_style="none"))
        done = 0
        while done < rows:
            n = min(_CHUNK, rows - done)
            ranks, nums = draw(data_rng, n)
            main, inter = logit_parts(ranks, nums, n)
            logit = bias + main + (inter - inter_shift) * inter_scale
            logit += data_rng.normal(0.0, _NOISE_STD, size=n)
            label = (data_rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
            positives += int(label.sum())
            cols = []
            for name in cat_names:
                f = by_name[name]
                ids = pa.array(f.label_of[ranks[name]].astype(np.int32))
                cols.append(f.dictionary.take(ids))
            cols += [pa.array(nums[name]) for name in num_names]
            cols.append(pa.array(label))
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))
            done += n
        writer.close()
        writer = None
        if sink is not None:
            sink.close()
        os.replace(tmp_path, data_path)
    finally:
        if writer is not None:
            writer.close()
        if sink is not None and not sink.closed:
            sink.close()
        if tmp_path.exists():
            tmp_path.unlink()

    num_informative = [n for n, r in zip(num_names, num_roles) if r == "inf"]
    truth = {
        "informative": sorted([f.name for f in inf_fields] + num_informative),
        "redundant": {n: by_name[n].source.name for n in sorted(red_names)},
        "noise": sorted(noise_names + [n for n, r in zip(num_names, num_roles) if r == "noise"]),
        "numeric": list(num_names),
        "numeric_informative": num_informative,
        "numeric_effect": _NUM_EFFECT if num_informative else None,
        "interactions": [list(p) for p in pairs],
        "vocab_sizes": {n: int(by_name[n].vocab) for n in cat_names},
        "label": "label",
        "rows": int(rows),
        "seed": int(seed),
        "ctr": positives / rows,
        "bias": bias,
        "format": fmt,
        "data_file": data_name,
    }
    tmp_truth = out_dir / "truth.json.tmp"
    tmp_truth.write_text(json.dumps(truth, indent=2) + "\n")
    os.replace(tmp_truth, out_dir / "truth.json")
    return {**truth, "data_file": str(data_path.resolve())}


def _solve_bias(logit: np.ndarray, target: float) -> float:
    # mean(sigmoid(logit + b)) is increasing in b: bisection is enough
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < target:
            lo = mid
        else:
            hi = mid
    return round(0.5 * (lo + hi), 10)
