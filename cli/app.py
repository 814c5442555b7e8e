"""`lightfmp train / prune / run / inspect / demo / data` — a thin layer over the Python API."""
from __future__ import annotations

import inspect
import math
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from lightfmp import distributed, pipeline
from lightfmp.config import check_one_rule
from lightfmp.datasets import FETCHERS, synthesize
from lightfmp.demo import demo
from lightfmp.errors import LightFMPError
from lightfmp.inspection import cut_line, final_model_line, gate_rows, plot_gates
from lightfmp.io import check_apart
from lightfmp.keep_rule import alone_note, gates_alone_note, shut_note
from lightfmp.progress import counted
from lightfmp.rundir import GATES_PLOT, open_run

from . import bench_cmds, serving_cmds
from .common import Command, Group, friendly, out, ranked, resolve_config, speaks
from .options import config_parameters, with_parameters

app = typer.Typer(help="Light-FMP: prune the feature fields (and the model parts that read them) of CTR models.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=Group)
data_app = typer.Typer(help="Datasets: synthetic generator and public CTR data (fetch).", no_args_is_help=True,
                       cls=Group)
app.add_typer(data_app, name="data")


_COMMON = [
    inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                      default=typer.Option(None, "--out", "-o", help="Run directory to create.")),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                      default=typer.Option(None, "--config", help="YAML file whose keys mirror the flags; flags win.")),
    inspect.Parameter("force", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--force", help="Replace an existing run directory (only a run "
                                           "lightfmp wrote; anything else, an export included, is refused).")),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--quiet", "-q", help="No progress bars or tables.")),
]


def _train_cmd(**kwargs):
    """Phase 1: train the backbone with one hard-concrete gate per field on a subset of the training rows."""
    cfg = resolve_config(kwargs)
    distributed.init(cfg.train.device)
    m = pipeline.train(cfg, kwargs["out"], force=kwargs["force"], quiet=kwargs["quiet"])
    if speaks(kwargs["quiet"]):
        if cfg.train.no_select:
            print_summary(m, kwargs["out"])
        else:
            out.print(f"pretrained {len(m['fields']['all'])} fields on {m['phases']['pretrain']['rows']} rows in "
                      f"{m['phases']['pretrain']['seconds']:.1f}s -> {kwargs['out']}; next: lightfmp prune {kwargs['out']}")


def _run_cmd(**kwargs):
    """All phases: gated pretraining on a subset, pruning, continued training; --no-select trains all fields."""
    cfg = resolve_config(kwargs)
    distributed.init(cfg.train.device)
    m = pipeline.run(cfg, kwargs["out"], force=kwargs["force"], quiet=kwargs["quiet"])
    if speaks(kwargs["quiet"]):
        print_summary(m, kwargs["out"])


app.command("train", cls=Command)(friendly(ranked(with_parameters(_train_cmd, config_parameters(("data", "model", "train"))
                                                   + _COMMON))))
app.command("run", cls=Command)(friendly(ranked(with_parameters(_run_cmd, config_parameters(("data", "model", "train", "prune"))
                                                 + _COMMON))))


@app.command("prune", cls=Command)
@friendly
@ranked
def prune_cmd(run: Path = typer.Argument(..., help="Run directory made by `lightfmp train`."),
              keep: Optional[int] = typer.Option(None, "--keep", help="Keep K fields: the first K of the forward order, "
                                                 "or the K costliest to close where measurably better (default: "
                                                 "the run's --keep, if it had one)."),
              threshold: Optional[float] = typer.Option(None, "--threshold",
                                                        help="Drop fields whose gate is below this (default: the "
                                                             "run's rule: its --keep or --threshold if it had one, "
                                                             "else the closing test on the validation rows)."),
              continue_epochs: Optional[int] = typer.Option(None, "--continue-epochs",
                                                            help="Epochs of continued training; 0 skips phase 3; "
                                                                 "with 2 or more the rule decides after the first, "
                                                                 "but --threshold on the phase-1 gates (default: the "
                                                                 "run's --continue-epochs or --epochs)."),
              closing_test: bool = typer.Option(False, "--closing-test",
                                                help="Use the default rule, the closing test on the validation rows, "
                                                     "even where the run recorded --keep or --threshold (a prune "
                                                     "records the rule it used)."),
              quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables.")):
    """Phases 2 and 3: choose the fields on the validation rows, slice the others out, continue training."""
    check_one_rule(keep, threshold, closing_test)
    m = pipeline.prune(run, keep=keep, threshold=threshold, continue_epochs=continue_epochs, quiet=quiet,
                       default_rule=closing_test)
    if speaks(quiet):
        print_summary(m, run)


SCORE_HEADERS = {"closing cost in standard errors": "closing cost (SE)", "forward order position": "forward order",
                 "costliest-to-close order position": "costliest to close"}


@app.command("inspect", cls=Command)
@friendly
def inspect_cmd(run: Path = typer.Argument(..., help="Run directory."),
                plot: Optional[Path] = typer.Option(None, "--plot", help=f"PNG path (default: RUN/{GATES_PLOT})."),
                quiet: bool = typer.Option(False, "--quiet", "-q", help="Write the chart only; no table.")):
    """The gate table (field, gate value, L0 probability, kept) and a PNG bar chart."""
    r = open_run(run)
    if not r.select:
        raise LightFMPError(f"{run}: a --no-select run has no gates")
    if plot is not None:  # a file inside a Parquet data directory would become a part of the data
        check_apart(plot, r.config.data.data, "the run's --data")
    rows = gate_rows(r)
    cut = cut_line(r, rows)
    path = plot_gates(rows, plot or r.path / GATES_PLOT, title=f"{r.config.model.backbone} gates ({r.path.name})",
                      cut=cut, run=r.path)
    if quiet:
        return
    t = Table(title=f"gates of {run} ({r.state})")
    scored = any("score" in row for row in rows)
    header = SCORE_HEADERS.get(cut.get("score"), "score")
    for c in ("field", "kind", "gate", "L0 probability", *([header] if scored else []), "kept"):
        t.add_column(c, justify="left" if c in ("field", "kind", "kept") else "right")
    for row in rows:
        score = [score_text(row.get("score"), cut.get("cut"))] if scored else []
        t.add_row(escape(row["field"]), row["kind"], f"{row['gate']:.3f}", f"{row['l0_probability']:.3f}", *score,
                  ("yes (gate shut in phase 1)" if row.get("shut") else "yes") if row["kept"]
                  else "[dim]-[/]" if row["kept"] is None  # undecided until prune
                  else f"[dim]no ({escape(row['repeats'])})[/]" if "repeats" in row
                  else "[dim]no[/]")  # escape: a column name such as "a[/b]" is no markup
    out.print(t)
    on_gate = cut.get("score", "gate") == "gate"
    suffix = (f" (cut at gate {cut['cut']:.3f})" if on_gate else f" (cut at {cut['cut']:g}: {cut['score']})") \
        if cut["cut"] is not None else \
        " (decided by `lightfmp prune`)" if r.state != "complete" else ""
    out.print(f"kept by: {cut['rule']}{suffix}")
    if cut.get("shut_but_kept"):
        out.print(f"note: {escape(shut_note(cut['shut_but_kept'], r.config.prune.keep))}")
    best_alone = cut.get("kept_alone")  # where the closing test closed every field it tested
    if isinstance(best_alone, dict) and all(isinstance(best_alone.get(k), (int, float)) for k in ("cost", "se")):
        out.print(f"note: {escape(alone_note(best_alone))}")
    if rows and all(row["kept"] is False for row in rows) and r.state != "complete":
        out.print(f"no field's gate reaches it: `lightfmp prune {escape(str(run))} --threshold T` with a lower T, or "
                  f"--keep K, decides from this run's phase 1")
    alone = cut.get("gates_alone")
    if alone and alone.get("recorded") is False:
        out.print("before it: no early cut (phase 1 did not record its gates alone)")
    elif alone:
        out.print(f"before it: {escape(gates_alone_note(alone))}")
    final = final_model_line(r)
    if final:
        out.print(final)
    out.print(f"chart: {path}")


def score_text(v, cut) -> str:
    """A score as the table shows it: '-' where the rule did not score the field, 'inf' beyond any number of SE,
    positions as they are, costs to two decimals, or more where two would round one onto the other side of the cut."""
    if v is None:
        return "-"
    if not isinstance(v, float):
        return str(v)
    if math.isinf(v) or math.isnan(v):
        return str(v)
    def crosses(digits: int) -> bool:
        return isinstance(cut, (int, float)) and (v < cut <= round(v, digits) or v > cut >= round(v, digits))
    digits = 2
    while digits < 15 and crosses(digits):
        digits += 1
    if crosses(digits):  # closer to the cut than 15 decimals tell: every digit
        return repr(v)
    return f"{round(v, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.00" for a cost that rounds to zero


def print_summary(m: dict, run, baseline: dict | None = None) -> None:
    t = Table(title=f"run {run}")
    t.add_column("")
    t.add_column("Light-FMP" if m.get("select") else "all fields", justify="right")
    if baseline:
        t.add_column("all fields (--no-select)", justify="right")
    def row(name, f):
        t.add_row(name, f(m), *([f(baseline)] if baseline else []))
    row("fields kept", lambda x: f"{len(x['fields']['kept'])} / {len(x['fields']['all'])}")
    row("test AUC", lambda x: f"{x['test']['auc']:.4f}")
    row("test logloss", lambda x: f"{x['test']['logloss']:.4f}")
    row("valid AUC", lambda x: f"{x['valid']['auc']:.4f}")
    row("parameters before", lambda x: f"{x['params']['before']:,}")
    row("parameters after", lambda x: f"{x['params']['after']:,}")
    for ph in ("pretrain", "prune", "continue"):
        row(f"{ph} seconds (rows)", lambda x, ph=ph: f"{x['phases'][ph]['seconds']:.2f} ({x['phases'][ph]['rows']:,})")
    row("seconds total", lambda x: f"{x['seconds_total']:.2f}")
    out.print(t)
    if m["fields"]["dropped"]:
        out.print(f"kept: {', '.join(m['fields']['kept'])}\ndropped: {', '.join(m['fields']['dropped'])}")


@app.command("demo", cls=Command)
@friendly
def demo_cmd(out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to put the runs "
                                                    "(default: $LIGHTFMP_HOME/runs/demo)."),
             backbone: str = typer.Option("deepfm", "--backbone", help="Backbone: mlp, deepfm, dcnv2 or widedeep."),
             compare: bool = typer.Option(True, "--compare/--no-compare", help="Also train all fields, for comparison."),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines; the summary table only."),
             force: bool = typer.Option(False, "--force", help="Replace runs in --out of other data than the demo's "
                                        "(an earlier demo's runs are replaced without it).")):
    """The main job on an embedded default: `run` on MovieLens-100k (DeepFM), then a summary table."""
    res = demo(out_dir, backbone=backbone, compare=compare, quiet=quiet, force=force)
    print_summary(res["lightfmp"], res["run_dir"], res.get("all_fields"))


@data_app.command("synth", cls=Command)
@friendly
def synth_cmd(rows: int = typer.Option(100_000, "--rows", help="Data rows to write."),
              fields: int = typer.Option(39, "--fields", help="Feature fields in all: informative, redundant and "
                                         "noise."),
              informative: int = typer.Option(8, "--informative", help="Fields that drive the label."),
              out_dir: Path = typer.Option(..., "--out", help="Directory for the data file and truth.json."),
              seed: int = typer.Option(0, "--seed", help="Seed of the generator (same seed, same files)."),
              redundant: Optional[int] = typer.Option(None, "--redundant", help="Fields that repeat an informative "
                                                      "field under new value names: a copy, or (about half) "
                                                      "a coarser function merging its rarer values in pairs "
                                                      "(default: as many as --informative, as far as --fields "
                                                      "allows)."),
              fmt: str = typer.Option("parquet", "--format", help="File format: parquet or csv.")):
    """Synthetic CTR data with planted informative, redundant and noise fields, plus truth.json."""
    truth = synthesize(rows=rows, fields=fields, informative=informative, out_dir=out_dir, seed=seed,
                       redundant=redundant, fmt=fmt)
    out.print(f"wrote {truth['data_file']} ({counted(rows, 'row')}, {counted(fields, 'field')}, label column "
              f"'{truth['label']}', CTR {truth['ctr']:.3f}) and {Path(truth['data_file']).parent / 'truth.json'}",
              highlight=False)


@data_app.command("fetch", cls=Command)
@friendly
def fetch_cmd(name: str = typer.Argument(..., help=f"Dataset name: {', '.join(FETCHERS)}."),
              home: Optional[Path] = typer.Option(None, "--home", help="Cache directory (default: $LIGHTFMP_HOME or ~/.cache/lightfmp).")):
    """Download a public dataset into the cache and prepare its CTR table."""
    fetch = FETCHERS.get(name)
    if fetch is None:
        raise LightFMPError(f"unknown dataset '{name}' (available: {', '.join(FETCHERS)})")
    started = time.time()
    try:
        path = fetch(home=home)
    except RuntimeError as e:
        raise LightFMPError(str(e)) from None
    # a file the fetch wrote is newer than its start (1 s: file systems that keep whole seconds)
    reused = Path(path).is_file() and Path(path).stat().st_mtime < started - 1
    out.print(f"already in the cache: {path}" if reused else f"prepared {path}")


serving_cmds.register(app)
bench_cmds.register(app)


def main() -> None:
    """The commands, in this process (raises SystemExit with the exit code). The `lightfmp` command runs them
    through `lightfmp.cli.entry.main`, which also looks after the process around them."""
    app(prog_name="lightfmp")


if __name__ == "__main__":
    main()
