"""`lightfmp bench`: every selector on identical splits, the same backbone and the same retraining budget."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import MAX_SEED, RunConfig, TrainConfig, comma_ints
from ..errors import LightFMPError, first_repeat
from ..dataset import load_dataset, quick_sample
from ..progress import Reporter
from ..keep_rule import check_keep
from ..metrics import selection_stability
from ..training import warm_up
from .selectors import GATE_METHODS, METHODS, SELECTORS, Context, full_model, train_fields, select_lightfmp

QUICK_ROWS = 20000


def parse_methods(text: str | None) -> list[str]:
    if text is None or text.strip().lower() == "all":
        return list(METHODS)
    names = [m.strip().lower() for m in text.split(",")]
    if not any(names):
        raise LightFMPError(f"--methods {text!r}: name at least one method (valid: {', '.join(METHODS)}), or all")
    if "all" in names:
        raise LightFMPError(f"--methods {text!r}: 'all' stands alone (every method); otherwise list the methods")
    if not all(names):
        raise LightFMPError(f"--methods {text!r}: an empty item between commas (or at an end); remove the extra comma")
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise LightFMPError(f"--methods {text!r}: unknown method(s) {', '.join(bad)} (valid: {', '.join(METHODS)})")
    twice = first_repeat(names)  # a table row per method: a repeat would be run once, quietly
    if twice is not None:
        raise LightFMPError(f"--methods {text!r}: {twice} is given twice; give each once")
    return [m for m in METHODS if m in names]  # canonical order


def parse_seeds(text: str | None) -> list[int]:
    return comma_ints(text if text is not None else "0", "--seeds", 0, MAX_SEED, "0,1,2")


def parse_fractions(text: str) -> list[float]:
    try:
        fr = [float(s) for s in text.split(",")]  # an empty item (0.1,,1) is refused too
    except ValueError:
        raise LightFMPError(f"--ablate-subset {text!r}: expected comma-separated fractions like 0.05,0.1,1.0") from None
    if any(not 0 < f <= 1 for f in fr):
        raise LightFMPError(f"--ablate-subset {text!r}: each fraction must be in (0, 1]")
    twice = first_repeat(fr)  # compared as numbers: 0.5 and .50 are one fraction
    if twice is not None:
        raise LightFMPError(f"--ablate-subset {text!r}: {twice:g} is given twice; give each once")
    return fr


def quick_config(cfg: RunConfig, tmp: str | Path) -> RunConfig:
    """Smoke-run settings: about QUICK_ROWS rows (a row-hash sample, file order kept), 1 epoch of training and 3 of
    gated search. The sample is written once so every method and seed reads the same file."""
    if not cfg.data.data:
        raise LightFMPError("no data: pass --data FILE")
    small = quick_sample(cfg.data, QUICK_ROWS, Path(tmp) / "quick.parquet")
    return replace(cfg, data=small).but(epochs=1, pretrain_epochs=min(cfg.train.pretrain_epochs, 3))


def _context(cfg: RunConfig, seed: int, k: int, quick: bool = False) -> Context:
    """The data and config of one seed, with K checked against its fields."""
    scfg = cfg.but(seed=seed)
    data = load_dataset(scfg.data)
    check_keep(k, len(data.schema.fields), "--k")
    for split in ("valid", "test"):  # the bench compares test AUC; the rankers read validation AUC or logloss
        labels = data.split_rows(split).labels()
        if len(np.unique(labels)) < 2:
            raise LightFMPError(f"--seeds {seed}: the {split} split holds {len(labels):,} rows of one label only, so "
                                f"the methods cannot be compared by AUC; give more rows (or another --split)")
    return Context(scfg, data, quick=quick)


def _check_seeds(cfg: RunConfig, seeds: list[int], k: int) -> None:
    """Every seed after the first has its splits checked (`_context`) before any method trains: one that cannot be
    compared is refused at once, not after the earlier seeds' work. Each is read and let go (a read costs seconds,
    the methods minutes; holding every seed's rows at once would multiply the memory)."""
    for seed in seeds[1:]:
        _context(cfg, seed, k)


def _one(ctx: Context, method: str, k: int) -> dict:
    """One method on one seed: select, retrain on the top K (unless the method trained its own), evaluate."""
    if method == "full":
        _, res = full_model(ctx)
        kept, sel, ranking = list(ctx.names), 0.0, None
    else:
        s = SELECTORS[method](ctx, k)
        ranking, sel = s.ranking, s.seconds
        if s.result is not None:
            res, kept = s.result, list(s.result["fields"])
        else:
            kept = [n for n in ctx.names if n in set(s.ranking[:k])]
            _, res = train_fields(ctx.cfg, ctx.data, kept)
    return {"method": method, "kept": kept, "ranking": ranking, "auc": res["test"]["auc"],
            "logloss": res["test"]["logloss"], "valid_auc": res["valid"]["auc"], "selection_seconds": sel,
            "total_seconds": sel + res["seconds"], "params": int(res["params"])}


def _aggregate(method: str, runs: list[dict], seeds: list[int], n_fields: int) -> dict:
    """One method's runs over the seeds: means and standard deviations (None for one seed), and how alike its kept
    sets are (`stability`: lightfmp.metrics.selection_stability; None for one seed)."""
    a = lambda key: np.array([r[key] for r in runs], dtype=np.float64)  # noqa: E731
    sd = lambda v: float(v.std(ddof=1)) if len(v) > 1 else None  # noqa: E731  (one seed has no spread)
    return {"method": method, "kept": runs[0]["kept"], "auc": float(a("auc").mean()), "auc_std": sd(a("auc")),
            "logloss": float(a("logloss").mean()), "logloss_std": sd(a("logloss")),
            "selection_seconds": float(a("selection_seconds").mean()),
            "total_seconds": float(a("total_seconds").mean()), "params": int(round(a("params").mean())),
            "seeds": seeds, "kept_per_seed": [r["kept"] for r in runs], "ranking": runs[0]["ranking"],
            "auc_per_seed": [float(r["auc"]) for r in runs], "logloss_per_seed": [float(r["logloss"]) for r in runs],
            "stability": selection_stability([r["kept"] for r in runs], n_fields)}


def _trapz(y, x) -> float:
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    return float(((y[1:] + y[:-1]) * np.diff(x)).sum() / 2)


def curves(ctx: Context, rankings: dict[str, list[str]], reporter: Reporter) -> dict:
    """AUC vs K (1..F) per gate method, reusing each method's single ranking and retraining per K (as in the
    ERASE benchmark); `area` is the trapezoid area over K/F in [1/F, 1], divided by its width (a mean AUC).
    Logs one line per K (a retraining each, unless an earlier method kept the same fields)."""
    cache: dict[frozenset, float] = {}
    n = len(ctx.names)
    out = {}
    reporter.log(f"curves: AUC vs K for {', '.join(rankings)}, K = 1..{n} (one retraining per new set of fields)")
    for method, ranking in rankings.items():
        aucs = []
        for k in range(1, n + 1):
            key = frozenset(ranking[:k])
            again = key in cache
            if not again:
                t0 = time.perf_counter()
                _, res = train_fields(ctx.cfg, ctx.data, [f for f in ctx.names if f in key])
                cache[key] = res["test"]["auc"]
            aucs.append(cache[key])
            reporter.log(f"curve {method}: K={k}/{n} test AUC {cache[key]:.4f}"
                         + (" (same fields as before)" if again else f" ({time.perf_counter() - t0:.1f} s)"))
        ks = np.arange(1, n + 1)
        area = float(_trapz(aucs, ks) / (n - 1)) if n > 1 else float(aucs[0])
        out[method] = {"k": ks.tolist(), "auc": [float(v) for v in aucs], "area": area}
        reporter.log(f"curve {method}: area {area:.4f}")
    return out


def _check_bench_config(cfg: RunConfig) -> None:
    """What the bench sets itself, refused where given (a flag, or a key of --config such as a run's config.yaml):
    its --seeds set the split and the initialisation together (a fixed --init-seed would train every seed from the
    same start; --seed would be ignored), --k is every method's rule, and every method retrains for --epochs (a
    continue_epochs would change Light-FMP's budget alone); --no-select has no fields to select."""
    t, p = cfg.train, cfg.prune
    given = [(t.init_seed is not None, f"--init-seed {t.init_seed}", "--seeds set the split and the initialisation"),
             (cfg.data.seed != 0, f"--seed {cfg.data.seed}", "--seeds set the split and the initialisation"),
             (t.no_select, "--no-select", "methods select fields (the full model is the method 'full')"),
             (t.target_k is not None, f"--target-k {t.target_k}", "--k is every method's number of fields"),
             (p.keep is not None, f"--keep {p.keep}", "--k is every method's number of fields"),
             (p.threshold is not None, f"--threshold {p.threshold}", "--k is every method's number of fields"),
             (p.continue_epochs is not None, f"--continue-epochs {p.continue_epochs}",
              "every method retrains for --epochs")]
    bad = next(((what, why) for hit, what, why in given if hit), None)
    if bad is not None:
        raise LightFMPError(f"{bad[0]}: not for bench, whose {bad[1]} (drop it from --config"
                            f"{'' if bad[0].split()[0] in BENCH_LACKS else ' or the flags'})")


# run / prune settings bench has no flag for: only a --config file can set them
BENCH_LACKS = ("--init-seed", "--keep", "--threshold", "--continue-epochs")


def run_bench(cfg: RunConfig, k: int, seeds: list[int], methods: list[str], quick: bool = False,
              curve: bool = False, reporter: Reporter | None = None,
              on_table=None) -> dict:
    """All `methods` on every seed; returns {"results": [...aggregated per method...], "curves": ...}.

    `on_table(doc)` is called with the results before the curves start (the curves retrain once per K and take
    the longest), so that a caller can save them first; the curves use the first seed's rankings and data."""
    reporter = reporter or Reporter(quiet=True)
    _check_bench_config(cfg)
    if curve and not any(m in GATE_METHODS for m in methods):
        raise LightFMPError(f"--plot: needs at least one gate method ({', '.join(GATE_METHODS)})")
    per: dict[str, list[dict]] = {m: [] for m in methods}
    first: Context | None = None
    ctx: Context | None = None
    t_all = time.perf_counter()
    warm_up()  # no method's seconds include the process's one-time imports
    _check_seeds(cfg, seeds, k)
    for seed in seeds:
        ctx = _context(cfg, seed, k, quick)
        if curve and first is None:
            first = ctx
        for m in methods:
            reporter.log(f"seed {seed}: {m}")
            r = _one(ctx, m, k)
            per[m].append(r)
            reporter.log(f"  kept {', '.join(r['kept'])}  test AUC {r['auc']:.4f}  "
                         f"selection {r['selection_seconds']:.1f}s")
    results = [_aggregate(m, per[m], seeds, len(ctx.names)) for m in methods]
    doc = {"k": k, "seeds": seeds, "backbone": cfg.model.backbone, "quick": quick, "data": str(cfg.data.data),
           "epochs": cfg.train.epochs, "pretrain_epochs": cfg.train.pretrain_epochs, "subset": cfg.train.subset,
           "results": results, "seconds": time.perf_counter() - t_all}
    if on_table is not None:
        on_table(doc)
    if first is not None:
        doc["curves"] = curves(first, {m: per[m][0]["ranking"] for m in methods if m in GATE_METHODS}, reporter)
        doc["seconds"] = time.perf_counter() - t_all
    return doc


def ablate_subset(cfg: RunConfig, k: int, seeds: list[int], fractions: list[float],
                  reporter: Reporter | None = None) -> dict:
    """Light-FMP with each phase-1 subset fraction on the same data: kept fields, test AUC and seconds."""
    reporter = reporter or Reporter(quiet=True)
    _check_bench_config(cfg)
    default = TrainConfig().subset
    if cfg.train.subset != default:  # a flag or a --config key: each fraction is phase 1's subset, it would be ignored
        raise LightFMPError(f"--subset {cfg.train.subset:g}: not for --ablate-subset, whose fractions are phase 1's "
                            f"subsets (drop it from --config or the flags)")
    rows = {f: [] for f in fractions}
    _check_seeds(cfg, seeds, k)
    for seed in seeds:
        ctx = _context(cfg, seed, k)
        for f in fractions:
            if len(ctx.data.subset(f, seed)[0]) == 0:
                raise LightFMPError(f"--ablate-subset {f:g}: selects none of the {ctx.data.split_sizes()['train']:,} "
                                    f"training rows (seed {seed}); give a larger fraction")
            s = select_lightfmp(ctx, k, subset=f)
            rows[f].append({"kept": s.result["fields"], "auc": s.result["test"]["auc"],
                            "logloss": s.result["test"]["logloss"], "selection_seconds": s.seconds,
                            "total_seconds": s.seconds + s.result["seconds"]})
            reporter.log(f"seed {seed} subset {f}: AUC {s.result['test']['auc']:.4f}")
    out = []
    for f, rs in rows.items():
        auc = np.array([r["auc"] for r in rs])
        out.append({"subset": f, "kept": rs[0]["kept"], "kept_per_seed": [r["kept"] for r in rs],
                    "stability": selection_stability([r["kept"] for r in rs], len(ctx.names)),
                    "auc": float(auc.mean()), "auc_std": float(auc.std(ddof=1)) if len(auc) > 1 else None,
                    "logloss": float(np.mean([r["logloss"] for r in rs])),
                    "selection_seconds": float(np.mean([r["selection_seconds"] for r in rs])),
                    "total_seconds": float(np.mean([r["total_seconds"] for r in rs]))})
    return {"k": k, "seeds": seeds, "backbone": cfg.model.backbone, "ablation": out}
