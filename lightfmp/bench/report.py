"""Terminal table, JSON and the AUC-vs-K chart of `lightfmp bench`."""
from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..io import PNG_METADATA, atomic_path, check_output_file, write_json_atomic

# Per-method keys kept in --json (rankings are long; they stay for the curves and for debugging)
JSON_KEYS = ("method", "kept", "auc", "auc_std", "logloss", "logloss_std", "selection_seconds", "total_seconds",
             "params", "seeds", "kept_per_seed", "auc_per_seed", "logloss_per_seed", "stability", "ranking")


def results_table(doc: dict) -> Group:
    """The numbers, one row per method, narrow enough for an 80-column terminal; below them one line per method
    with the fields it kept (wrapped, not squeezed into a column). Standard deviations over the seeds of the
    logloss, per-seed values and rankings are in --json."""
    curves = doc.get("curves", {})
    t = Table(title=f"bench: {doc['backbone']}, K={doc['k']}, seeds {','.join(map(str, doc['seeds']))}"
                    + (" (quick)" if doc.get("quick") else ""), box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
              collapse_padding=True)
    cols = [("method", "left"), ("test AUC ± sd", "right"), ("logloss", "right"), ("select s", "right"),
            ("total s", "right"), ("params", "right")] + ([("AUC-K", "right")] if curves else [])
    for c, j in cols:
        t.add_column(c, justify=j, no_wrap=True)
    lines = []
    for r in doc["results"]:
        area = curves.get(r["method"], {}).get("area")
        t.add_row(r["method"], _mean_sd(r["auc"], r["auc_std"], "±"), f"{r['logloss']:.4f}",
                  _seconds(r["selection_seconds"]), _seconds(r["total_seconds"]), _count(r["params"]),
                  *([f"{area:.4f}" if area is not None else "-"] if curves else []))
        kept = ", ".join(r["kept"]) if len(r["kept"]) <= 12 else f"{len(r['kept'])} fields"
        stability = f" (stability over the seeds {r['stability']:.2f})" if r.get("stability") is not None else ""
        lines.append(Text.assemble((f"{r['method']}: ", "bold"), kept, stability))
    return Group(t, Text("kept fields", style="bold underline"), *lines)


def _mean_sd(mean: float, sd: float | None, sep: str) -> str:
    """0.7912±0.0012; the mean alone for one seed (no spread to show)."""
    return f"{mean:.4f}" if sd is None else f"{mean:.4f}{sep}{sd:.4f}"


def _seconds(s: float) -> str:
    return f"{s:.1f}" if s < 1000 else f"{s:,.0f}"


def _count(n: int) -> str:
    """1234 -> 1,234; 12345678 -> 12.3M (the column stays narrow)."""
    return f"{n:,}" if n < 1_000_000 else f"{n / 1e6:.1f}M"


def ablation_table(doc: dict) -> Table:
    t = Table(title=f"Light-FMP subset ablation: {doc['backbone']}, K={doc['k']}, seeds "
                    f"{','.join(map(str, doc['seeds']))}")
    for c in ("subset", "kept", "test AUC", "selection s", "total s"):
        t.add_column(c, justify="left" if c == "kept" else "right")
    for r in doc["ablation"]:
        t.add_row(f"{r['subset']:g}", ", ".join(r["kept"]), _mean_sd(r["auc"], r["auc_std"], " ± "),
                  f"{r['selection_seconds']:.2f}", f"{r['total_seconds']:.2f}")
    return t


def write_json(doc: dict, path: str | Path) -> None:
    out = dict(doc)
    if "results" in doc:
        out["results"] = [{k: r[k] for k in JSON_KEYS if k in r} for r in doc["results"]]
    write_json_atomic(path, out, flag="--json")


def plot_curves(doc: dict, path: str | Path) -> Path:
    check_output_file(path, "png", "--plot")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, c in doc["curves"].items():
        ax.plot(c["k"], c["auc"], marker="o", ms=3, label=f"{method} (area {c['area']:.4f})")
    full = next((r for r in doc["results"] if r["method"] == "full"), None)
    if full is not None:  # the curves are the first seed's: so is the full model they reach at K = all fields
        first = full.get("auc_per_seed", [full["auc"]])[0]
        ax.axhline(first, color="gray", ls="--", lw=1, label=f"full (seed {doc['seeds'][0]})")
    ax.set_xlabel("K (fields kept)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # K counts fields: no 2.5
    ax.set_ylabel("test AUC")
    ax.set_title(f"AUC vs K, {doc['backbone']} (each method's ranking, retrained per K)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, "png", "--plot") as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata=PNG_METADATA)
    plt.close(fig)
    return Path(path)
