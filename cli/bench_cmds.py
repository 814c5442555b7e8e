"""`lightfmp bench` (registered on the main app by cli/app.py: `bench_cmds.register(app)`)."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

from lightfmp.bench import ablate_subset, parse_fractions, parse_methods, parse_seeds, quick_config, run_bench
from lightfmp.bench.report import ablation_table, plot_curves, results_table, write_json
from lightfmp import checkpoint
from lightfmp.config import resolve
from lightfmp.errors import LightFMPError
from lightfmp.io import check_apart, check_output_file
from lightfmp.progress import Reporter
from lightfmp.scratch import scratch_dir

from .common import Command, friendly, note_config_origin, out
from .options import config_flags, config_parameters, with_parameters


def _param(name, annotation, option):
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)


def register(app) -> None:
    extra = [
        _param("k", Optional[int], typer.Option(None, "--k", help="Fields each method keeps.")),
        _param("seeds", str, typer.Option("0", "--seeds", help="Comma-separated seeds (split, init, subset).")),
        _param("methods", str, typer.Option("all", "--methods", help="Comma-separated methods (default all): "
               "full, random, lightfmp, lightfmp-fulldata, autofield, lpfs, sfs, shark, permutation, gbdt, lasso.")),
        _param("json_file", Optional[Path], typer.Option(None, "--json", help="Write the results as JSON.")),
        _param("plot", Optional[Path], typer.Option(None, "--plot", help="PNG of AUC vs K (1..all fields) for "
               "the gate methods, one retraining per K.")),
        _param("ablate_subset", Optional[str], typer.Option(None, "--ablate-subset", help="Instead of the "
               "methods: Light-FMP per phase-1 subset fraction, e.g. 0.01,0.05,0.1,0.25,1.0.")),
        _param("quick", bool, typer.Option(False, "--quick", help="Smoke run: at most 20,000 rows, 1 epoch, 3 "
               "search epochs.")),
        _param("config", Optional[Path], typer.Option(None, "--config", help="YAML file of the data, model and "
               "training settings (keys mirror those flags; not --k, --seeds or --methods); flags win.")),
        _param("quiet", bool, typer.Option(False, "--quiet", "-q", help="No progress or table.")),
    ]

    def bench_cmd(**kwargs):
        """Compare field-selection methods on identical splits, backbone and retraining budget (test AUC at K)."""
        checkpoint.reset_hint(resumable=False)  # its runs train in a temporary folder: a stop starts again
        methods = parse_methods(kwargs["methods"])
        seeds = parse_seeds(kwargs["seeds"])
        fractions = parse_fractions(kwargs["ablate_subset"]) if kwargs["ablate_subset"] is not None else None
        if fractions is not None:  # the ablation trains Light-FMP per fraction and draws no curve: refused before it
            for flag, given in (("--plot", kwargs["plot"] is not None),
                                ("--methods", str(kwargs["methods"]).strip().lower() not in ("all", "lightfmp"))):
                if given:
                    raise LightFMPError(f"{flag} does not go with --ablate-subset (Light-FMP per phase-1 fraction, "
                                        f"a table only); drop one")
        k = kwargs["k"]
        if k is None:
            raise LightFMPError("missing --k K (the number of fields each method keeps)")
        if k < 1:
            raise LightFMPError(f"--k {k}: must be >= 1 (and at most the number of fields)")
        flags, config = config_flags(kwargs), str(kwargs["config"]) if kwargs["config"] else None
        note_config_origin(flags, config)
        cfg = resolve(flags, config)
        if kwargs["json_file"] is not None and kwargs["plot"] is not None \
                and Path(kwargs["json_file"]).absolute().resolve() == Path(kwargs["plot"]).absolute().resolve():
            raise LightFMPError(f"{kwargs['plot']}: given to both --json and --plot; give each its own file")
        for flag, key, kind in (("--json", "json_file", "json"), ("--plot", "plot", "png")):
            if kwargs[key] is not None:  # before hours of work, not after; never a part of a Parquet data directory
                check_output_file(kwargs[key], kind, flag)
                check_apart(kwargs[key], cfg.data.data, "--data")
        quiet = kwargs["quiet"]
        reporter = Reporter(quiet)
        json_file = kwargs["json_file"]
        curve = kwargs["plot"] is not None

        source = cfg.data.data

        def save_table(doc: dict) -> None:
            """The results are saved before the curves start: those retrain once per K and may be stopped."""
            doc["data"] = str(source)  # the user's file, not the temporary sample a --quick run read
            if json_file:
                try:
                    write_json(doc, json_file)
                except BaseException:  # a --json that can no longer be written (a full disk): the results shown
                    if not quiet:
                        out.print(results_table(doc))
                    raise
                if curve:
                    reporter.log(f"bench: results written to {json_file}; the curves are added when they finish")

        with scratch_dir("lightfmp-bench-") as tmp:
            if kwargs["quick"]:
                cfg = quick_config(cfg, tmp)
            try:
                if fractions is not None:
                    doc = ablate_subset(cfg, k, seeds, fractions, reporter)
                else:
                    doc = run_bench(cfg, k, seeds, methods, quick=kwargs["quick"], curve=curve, reporter=reporter,
                                    on_table=save_table)
            except LightFMPError as e:  # what the --quick sample showed is said of the user's file, not the sample
                if not kwargs["quick"]:
                    raise
                raise LightFMPError(str(e).replace(str(cfg.data.data), f"{source} (its --quick sample)")) from None
        doc["data"] = str(source)  # the user's file, not the temporary sample a --quick run read
        if not quiet:  # the table first: a --json that can no longer be written (a full disk) leaves it shown
            out.print(ablation_table(doc) if fractions is not None else results_table(doc))
        if json_file:
            write_json(doc, json_file)
        if kwargs["plot"] and "curves" in doc:
            plot_curves(doc, kwargs["plot"])
            if not quiet:
                out.print(f"chart: {kwargs['plot']}")

    # --seeds set the split and the initialisation together: no --init-seed (a config file's is refused by the bench)
    params = [p for p in config_parameters(("data", "model", "train")) if p.name != "init_seed"] + extra
    app.command("bench", cls=Command)(friendly(with_parameters(bench_cmd, params)))
