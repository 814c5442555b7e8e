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
can be scored against it. Both files are written atomically, and only into a
directory that holds none of the files written here, or holds an earlier
synthetic output (its truth.json says so): never over files of the user's.
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..config import MAX_SEED, check_range
from ..errors import LightFMPError
from ..io import (atomic_path, check_name_length, check_outside, check_writable, file_sha256, lightfmp_kind,
                  write_json_atomic)

__all__ = ["synthesize", "check_synth_out", "is_synth_truth"]

_CHUNK = 131_072  # rows generated and written per step: bounds memory
_CAL_ROWS = 100_000  # rows used to calibrate the interaction scale and the bias
_TARGET_CTR = 0.27
_MAIN_VAR = 2.0  # total variance of the main effects of categorical informative fields
_INTER_STD = 1.0  # std of the summed interaction terms
_NUM_EFFECT = "0.8*tanh(1.5*z) - 0.3*(z**2 - 1), z = (x - 5) / 2"
_LATENT_DIM = 4
_FIELD_CHUNK_BYTES = 20  # memory per row of a chunk, per field (ids, values, the table: ~2.3 MB a field measured)
_CELL_BYTES = {"parquet": 1, "csv": 3}  # the least a cell takes on disk ("v1," in CSV; Parquet measured ~1.6)
_NOISE_STD = 0.3  # extra logit noise on top of the Bernoulli draw
OUTPUT_FILES = ("data.parquet", "data.csv", "truth.json")
# what every truth.json written here holds: how an earlier synthetic output (which may be replaced) is recognised
TRUTH_KEYS = ("informative", "redundant", "noise", "interactions", "vocab_sizes", "label", "rows", "seed", "format",
              "data_file")


def is_synth_truth(path: Path) -> bool:
    """Whether `path` is a truth.json that `synthesize` wrote."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and all(k in doc for k in TRUTH_KEYS) and doc["format"] in ("parquet", "csv") \
        and doc["data_file"] in ("data.parquet", "data.csv")


@contextmanager
def _restored_on_failure(path: Path):
    """`path` (truth.json) as it was before the block, put back (or removed, where there was none) if the block
    fails after it calls the yielded function (the new file is in place, its data file not yet)."""
    before = path.read_bytes() if path.is_file() else None
    written = []
    try:
        yield lambda: written.append(True)
    except BaseException:
        if written:
            if before is None:
                path.unlink(missing_ok=True)
            else:
                with atomic_path(path) as tmp:
                    tmp.write_bytes(before)
        raise


@contextmanager
def _made_dir(path: Path):
    """`path` created (with its parents); if the block fails or is stopped, the folders it created go again while
    they are empty (a file of the user's put there meanwhile keeps them)."""
    made = [d for d in [path, *path.absolute().parents] if not d.exists()]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for d in made:  # the deepest first
            try:
                d.rmdir()
            except OSError:
                break
        raise


def _calibration_rows(rows: int) -> int:
    return min(_CAL_ROWS, max(rows, 20_000))


def check_resources(rows: int, fields: int, fmt: str, out_dir: Path) -> None:
    """Refuse, before any work, sizes this machine cannot hold: a chunk of `fields` columns beyond its memory, or a
    file whose least possible size exceeds the free space where it goes (a generator left running fills the disk)."""
    chunk = max(min(_CHUNK, rows), _calibration_rows(rows))  # the most rows drawn at once
    need = fields * chunk * _FIELD_CHUNK_BYTES
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf here: leave it to the allocator
        memory = None
    if memory is not None and need > memory:
        raise LightFMPError(f"--fields {fields:,}: about {need / 2**30:,.1f} GiB to generate a chunk of "
                            f"{chunk:,} rows, more than this machine's {memory / 2**30:,.1f} GiB of memory")
    where = next(q for q in [out_dir, *out_dir.absolute().parents] if q.exists())
    least, free = rows * (fields + 1) * _CELL_BYTES[fmt], shutil.disk_usage(where).free
    if least > free:
        raise LightFMPError(f"--rows {rows:,} x --fields {fields:,}: at least {least / 2**30:,.1f} GiB of {fmt}, more "
                            f"than the {free / 2**30:,.1f} GiB free in {where}")


def check_synth_out(out_dir: str | Path) -> None:
    """Refuse, before any work, an output directory that is a file, or that holds data.parquet, data.csv or
    truth.json of the user's (not an earlier synthetic output): they would be overwritten."""
    out_dir = Path(out_dir)
    check_name_length(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LightFMPError(f"{out_dir}: is a file; the output needs a directory")
    parent = next((q for q in out_dir.absolute().parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise LightFMPError(f"{out_dir}: cannot be created, {parent} is a file")
    kind = lightfmp_kind(out_dir)
    if kind is not None:  # a run's or an export's folder: a later --force there would delete the data
        raise LightFMPError(f"{out_dir}: is a lightfmp {kind}; synthetic data needs a directory of its own")
    check_outside(out_dir)
    check_writable(out_dir, out_dir if out_dir.is_dir() else parent)
    present = [n for n in OUTPUT_FILES if (out_dir / n).exists() or (out_dir / n).is_symlink()]
    if not present:
        return
    ours = is_synth_truth(out_dir / "truth.json") and all((out_dir / n).is_file() and not (out_dir / n).is_symlink()
                                                          for n in present)
    if not ours:
        raise LightFMPError(f"{out_dir}: holds {', '.join(present)}, not an earlier `lightfmp data synth` output "
                            f"(no synthetic truth.json); choose another directory or remove them yourself")
    # synth leaves one data file, the one its truth.json names: a data file of the other format beside it is the
    # user's (e.g. their own Parquet copy of data.csv), which the new output would overwrite or delete
    named = json.loads((out_dir / "truth.json").read_text())["data_file"]
    other = next((n for n in present if n != "truth.json" and n != named), None)
    if other is not None:
        raise LightFMPError(f"{out_dir}: holds {other}, which is not the synthetic data its truth.json describes "
                            f"({named}); choose another directory or move {other} out first")
    # the data file named is the one synth wrote only while it still has the bytes truth.json records (a user's own
    # table copied there under that name is not replaced; truth.json files of older outputs record no sha256)
    recorded = json.loads((out_dir / "truth.json").read_text()).get("data_sha256")
    if named in present and recorded is not None and file_sha256(out_dir / named) != recorded:
        raise LightFMPError(f"{out_dir / named}: is not the synthetic data its truth.json describes (sha256 differs: "
                            f"changed or replaced since); choose another directory or move it out first")


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
        raise LightFMPError(f"--informative {informative} needs {k_cat} categorical fields but --fields {fields} "
                            f"leaves {n_cat} beside its {numeric} numeric ones (at most one numeric field is "
                            f"informative)")
    free = n_cat - k_cat
    if redundant is None:
        redundant = min(informative, free) if k_cat > 0 else 0
    if redundant < 0 or redundant > free:
        raise LightFMPError(f"--redundant {redundant}: must be in [0, {free}] (--fields {fields}, --informative "
                            f"{informative})")
    if redundant > 0 and k_cat == 0:
        raise LightFMPError(f"--redundant {redundant}: copies need at least one categorical informative field "
                            f"(--informative {informative})")
    return n_cat, num_inf, k_cat, redundant


NUMERIC = 2  # numeric fields of a table (fewer where it is too narrow)


def _fits(fields, informative, redundant, numeric) -> bool:
    try:
        _plan(fields, informative, redundant, numeric)
    except LightFMPError:
        return False
    return True


def synthesize(rows: int, fields: int, informative: int, out_dir, seed: int = 0,
               redundant: int | None = None, numeric: int | None = None, fmt: str = "parquet") -> dict:
    """Write ``out_dir/data.parquet`` (or ``data.csv``) and ``out_dir/truth.json``.

    ``fields`` counts every feature column (categorical ``f00..`` plus numeric ``n0..``);
    informative + redundant + noise == fields. ``redundant`` defaults to
    min(informative, categorical slots left). Returns the truth dict; its
    ``data_file`` is an absolute path, while truth.json stores it relative to
    out_dir (so the json bytes do not depend on where it was written).
    """
    if fmt not in ("parquet", "csv"):
        raise LightFMPError(f"--format {fmt!r}: expected parquet or csv")
    for flag, value, low, high in (("--rows", rows, 1, None), ("--fields", fields, 1, None),
                                   ("--informative", informative, 0, fields), ("--seed", seed, 0, MAX_SEED),
                                   ("--redundant", redundant, 0, None)):
        if value is None and flag == "--redundant":
            continue
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise LightFMPError(f"{flag} {value!r}: must be an integer")
        check_range(flag, value, low, high)
    numeric = min(NUMERIC, fields) if numeric is None else numeric
    if not 0 <= numeric <= fields:
        raise LightFMPError(f"numeric={numeric!r}: must be in [0, {fields}] (--fields)")
    # the numeric fields a table this narrow has room for: as many as asked, fewer where the informative
    # categorical fields need their places
    # (where none does, the plan's error at 0 numeric fields states the ranges with the most room)
    numeric = next((n for n in range(numeric, -1, -1) if _fits(fields, informative, redundant, n)), 0)
    out_dir = Path(out_dir)
    check_synth_out(out_dir)
    check_resources(rows, fields, fmt, out_dir)
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
    cal_n = _calibration_rows(rows)
    c_ranks, c_nums = draw(cal_rng, cal_n)
    c_main, c_inter = logit_parts(c_ranks, c_nums, cal_n)
    inter_shift = float(c_inter.mean()) if pairs else 0.0
    inter_scale = _INTER_STD / float(c_inter.std()) if pairs and c_inter.std() > 0 else 0.0
    c_logit = c_main + (c_inter - inter_shift) * inter_scale
    c_logit += cal_rng.normal(0.0, _NOISE_STD, size=cal_n)
    bias = _solve_bias(c_logit, _TARGET_CTR)

    check_synth_out(out_dir)  # again: the directory may have changed during the calibration
    with _made_dir(out_dir):  # a stop before the files are in place leaves no folder it made
        data_name = "data.parquet" if fmt == "parquet" else "data.csv"
        data_path = out_dir / data_name

        str_type = pa.string()
        schema = pa.schema([pa.field(c, str_type) for c in cat_names]
                           + [pa.field(c, pa.float64()) for c in num_names]
                           + [pa.field("label", pa.int64())])
        data_rng = np.random.default_rng([seed, 2])
        positives = 0
        with _restored_on_failure(out_dir / "truth.json") as truth_written, atomic_path(data_path) as tmp_path:
            writer = sink = None
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
            finally:
                if writer is not None:
                    writer.close()
                if sink is not None and not sink.closed:
                    sink.close()
            # truth.json goes in place first, the data file (still at its temporary name) right after it: a failure
            # before that leaves the earlier pair as it was, not new data beside an old truth.json; a failed rename
            # of the data file puts the earlier truth.json back (`_restored_on_failure`)
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
                "data_sha256": file_sha256(tmp_path),  # what a later synth into this folder may replace
            }
            write_json_atomic(out_dir / "truth.json", truth)
            truth_written()

        # an earlier output in the other format goes (check_synth_out refused the folder unless it was ours): the
        # truth.json beside it now describes the new file only
        (out_dir / ("data.csv" if data_name == "data.parquet" else "data.parquet")).unlink(missing_ok=True)
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
