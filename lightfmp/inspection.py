"""The gate table of a run and its bar chart."""
from __future__ import annotations

import math
from pathlib import Path

from .io import PNG_METADATA, atomic_path, check_output_file
from .keep_rule import CLOSING_RULE, decides_after_first_epoch, forward_rule, reaching, rule_site, selection_rule
from .rundir import Run


def cut_line(run: Run, rows: list[dict]) -> dict:
    """The rule the kept set came from and its cut on the gate axis (metrics.json `selection` once pruned). Before
    `lightfmp prune`, --keep K and the default rule are undecided (no cut), said with where they will decide."""
    m = run.metrics()
    if "selection" in m:
        return m["selection"]
    rule = run.config.prune
    gates = {r["field"]: r["gate"] for r in rows}
    if run.state == "complete" and rule.threshold is None:  # --keep K and the default read rows metrics.json lacks
        return {"rule": (f"--keep {rule.keep}" if rule.keep else "the default keep rule") + " (where and how it "
                "decided is not in metrics.json: a run written by an older lightfmp, or edited)", "cut": None}
    if run.state != "complete" and rule.threshold is None:
        deferred = decides_after_first_epoch(run.config.continue_epochs, rule.threshold)
        return {"rule": forward_rule(rule.keep, deferred) if rule.keep else CLOSING_RULE + rule_site(deferred),
                "cut": None}
    return selection_rule([r["field"] for r in rows if r["kept"]], gates, rule.keep, rule.threshold)


def final_model_line(run: Run) -> str | None:
    """Which of phase 3's models a complete run kept, as `lightfmp inspect` says it (history.json `continue`: its
    `best_epoch` counts the epochs after the first, 0 being the first epoch's model, or the cut after it where the
    rule closed fields); None before phase 3 or where the history does not say."""
    if run.state != "complete":
        return None
    h = run.history().get("continue")
    if not isinstance(h, dict) or not isinstance(h.get("epochs"), list):
        return None
    best, first = h.get("best_epoch"), h.get("first_epoch")
    first = first if isinstance(first, dict) else None
    n = len(h["epochs"]) + (1 if first is not None else 0)
    phase = run.metrics().get("phases")
    phase = phase.get("continue") if isinstance(phase, dict) else None
    averaged = phase.get("averaged_epochs") if isinstance(phase, dict) else None
    if isinstance(averaged, list) and averaged and all(isinstance(e, int) for e in averaged):
        return (f"final model: the mean of phase 3's epochs {', '.join(map(str, averaged))} of {n} (tied in "
                f"validation logloss)")
    if not isinstance(best, int) or isinstance(best, bool) or not 0 <= best <= len(h["epochs"]):
        return None
    if first is None:
        return f"final model: phase 3's epoch {best} of {n}" if best else None
    if best == 0:
        what = ("the cut after phase 3's first epoch, its dropped fields held at their means" if first.get("held")
                else "phase 3's first epoch")
        return f"final model: {what} (no later epoch of {n} beat it)"
    return f"final model: phase 3's epoch {best + 1} of {n} (its first epoch counted)"


def gate_rows(run: Run) -> list[dict]:
    """One row per field: deterministic gate, L0 (open) probability, and whether it is kept.

    Before pruning, `kept` says what the run's --threshold rule would keep; --keep and the default rule are decided
    by `lightfmp prune` on the validation rows, and until then `kept` is None (undecided)."""
    m = run.metrics()
    names = m["fields"]["all"]
    rule = run.config.prune
    if run.state == "complete":
        kept = set(m["fields"]["kept"])
    elif rule.keep is None and rule.threshold is not None:  # none, where no gate reaches it: prune decides again
        kept = set(reaching(names, [m["gates"][n] for n in names], rule.threshold))
    else:
        kept = None
    probs = m.get("open_probability", {})
    sel = m.get("selection", {})
    scores = sel.get("scores", {})  # closing cost in SE (default) / forward position (--keep K)
    # dropped by the --keep K search as a copy / a coarser function of a kept field
    repeats = {**{n: f"copy of {by}" for n, by in sel.get("copies", {}).items()},
               **{n: f"function of {by}" for n, by in sel.get("functions", {}).items()}}
    alone = sel.get("gates_alone", {})  # cut before phase 3 by the default rule's first step
    repeats.update({n: "shut by the gates alone" for n in alone.get("fields", []) if alone.get("cut")})
    shut = set(sel.get("shut_but_kept", []))
    rows = [{"field": n, "kind": run.schema.field(n).kind, "gate": float(m["gates"][n]),
             "l0_probability": float(probs.get(n, 1.0)), "kept": None if kept is None else n in kept,
             **({"score": _score(scores, n)} if scores else {}), **({"repeats": repeats[n]} if n in repeats else {}),
             **({"shut": True} if n in shut else {})}
            for n in names]
    return sorted(rows, key=lambda r: (-r["gate"], -r["l0_probability"], r["field"]))


def _score(scores: dict, name: str) -> float | int | None:
    """A field's score for the table and chart: None where the rule did not score it (not tested), inf where its
    closing cost was positive with no spread (beyond any number of standard errors: None in metrics.json)."""
    if name not in scores:
        return None
    return float("inf") if scores[name] is None else scores[name]


TICK_CHARS = 24  # a field name on the chart's axis: longer ones keep their start and end (the table has them whole)
# beyond this many fields the bars get no names (unreadable at any width; the table has them) and the chart keeps
# this width: laying out thousands of rotated labels took a minute and gigabytes for a picture no viewer opens
NAMED_BARS = 120


def _tick_label(name: str) -> str:
    if len(name) <= TICK_CHARS:
        return name
    head = (TICK_CHARS - 1) // 2
    return f"{name[:head]}\u2026{name[-(TICK_CHARS - 1 - head):]}"


def plot_gates(rows: list[dict], path: str | Path, title: str = "", cut: dict | None = None,
               run: Path | None = None) -> Path:
    """The bar chart as a PNG at `path` (the user's --plot: it replaces only an earlier PNG, and lies in no
    directory of lightfmp's but `run`'s, see `lightfmp.io.check_output_file`)."""
    check_output_file(path, "png", "--plot", run)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    scored = any(r.get("score") is not None for r in rows)  # the default rule: a second panel with its score
    width = 0.35 * min(len(rows), NAMED_BARS) + 2
    fig, axes = plt.subplots(2 if scored else 1, 1, figsize=(max(6, width), 7 if scored else 4), squeeze=False)
    ax = axes[0][0]
    colors = ["tab:green" if r["kept"] else "tab:gray" for r in rows]
    at = range(len(rows))  # bars by position: two long names shortened alike stay two bars
    named = len(rows) <= NAMED_BARS
    names = [_tick_label(r["field"]) for r in rows] if named else None
    ax.bar(at, [r["gate"] for r in rows], color=colors, tick_label=names)
    ax.set_ylabel("deterministic gate")
    ax.set_ylim(0, 1.05)
    score_ax = axes[1][0] if scored else ax
    if scored:  # an unscored field has no bar; one beyond any number of SE reaches the top, hatched
        values = [r.get("score") for r in rows]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        top = max(finite + [cut["cut"] if cut and cut.get("cut") is not None else 1.0]) * 1.1
        score_ax.bar(at, [math.nan if v is None else top if v == math.inf else v for v in values], color=colors,
                     tick_label=names, hatch=["//" if v == math.inf else "" for v in values])
        score_ax.set_ylabel(cut.get("score", "score") if cut else "score")
        score_ax.tick_params(axis="x", rotation=60)
    on_its_axis = scored or (cut or {}).get("score", "gate") == "gate"  # never a score's cut on the gate axis
    if cut is not None and cut.get("cut") is not None and on_its_axis:
        score_ax.axhline(cut["cut"], color="tab:red", linestyle="--", linewidth=1, label=f"cut at {cut['cut']:g}")
        score_ax.legend(loc="upper right", fontsize=8)
    ax.set_title((title or "Light-FMP gates (green: kept)")
                 + ("" if named else f"; {len(rows):,} fields in schema order, named in the table"))
    ax.tick_params(axis="x", rotation=60)
    if not named:
        for a in {ax, score_ax}:
            a.set_xticks([])
    fig.tight_layout()
    with atomic_path(path, "png", "--plot", run) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return path
