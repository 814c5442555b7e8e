"""What a user reads of a selection (the log, metrics.json, `lightfmp inspect`, gates.png) where the rule had
nothing to decide: every gate shut by phase 1, a recorded --threshold no gate reaches, scores a rule did not give."""
import json
import math

import pytest

from helpers import cli, one_line_error, write_csv

SHUT_EVERY_GATE = ("--l0-lambda", "5", "--gate-lr", "0.5", "--pretrain-epochs", "10", "--batch-size", "32",
                   "--subset", "0.5")  # on 1,200 rows: phase 1 shuts all five gates


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    """A small complete run (--keep 3) whose metrics the gate table's tests replace."""
    d = tmp_path_factory.mktemp("complete")
    r = cli("run", "--data", write_csv(d, n=600), "--label", "label", "--multi-hot", "tags:|", "--embed-dim", "4",
            "--hidden", "8", "--pretrain-epochs", "1", "--epochs", "1", "--batch-size", "128", "--keep", "3",
            "--out", d / "run", "--quiet")
    assert r.exit_code == 0, r.output
    return d / "run"


def _table(run_dir, gates, **metrics):
    """The gate table of `run_dir` as if its metrics.json held these gates and the other keys given (with no
    open_probability or selection unless given)."""
    from lightfmp import inspection
    from lightfmp.rundir import open_run
    run = open_run(run_dir)
    m = {k: v for k, v in run.metrics().items() if k not in ("open_probability", "selection")}
    m.update(gates=gates, **metrics)
    run.metrics = lambda **k: m
    return inspection.gate_rows(run)


def _run(tmp_path, *rule):
    csv = write_csv(tmp_path, n=1200)
    return cli("run", "--data", csv, "--label", "label", "--multi-hot", "tags:|", "--embed-dim", "4", "--hidden", "8",
               "--epochs", "3", *SHUT_EVERY_GATE, *rule, "--out", tmp_path / "run")


def test_a_field_kept_although_phase_1_shut_its_gate_is_said_so(tmp_path):
    """The default rule keeps at least one field; where phase 1 shut every gate it keeps the most open by log_alpha,
    which no pass tested. The run warns, metrics.json names it and inspect marks it (before: the closing test's
    words, as if it had been tested)."""
    r = _run(tmp_path)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(m["gates"].values()) == {0.0}
    kept = m["fields"]["kept"]
    assert len(kept) == 1 and m["selection"]["shut_but_kept"] == kept
    assert kept[0] == max(m["log_alpha"], key=lambda n: m["log_alpha"][n])
    said = " ".join(r.output.split())
    assert "warning" in said and f"{kept[0]}: kept by log_alpha although phase 1 shut its gate" in said
    shown = cli("inspect", tmp_path / "run")
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "yes (gate shut in phase 1)" in text and f"note: {kept[0]}: kept by log_alpha" in text
    assert "at least K under --keep K" not in text  # the default rule's words name no --keep


def test_a_recorded_threshold_no_gate_reaches_still_shows_the_gate_table(tmp_path):
    """The run stops after phase 1 with a one-line error that names `lightfmp prune`, which decides again from the
    kept phase 1; inspect shows every gate (none kept) rather than repeating the error."""
    r = _run(tmp_path, "--threshold", "0.5", "--quiet")
    one_line_error(r, "no field's gate reached --threshold 0.5", f"lightfmp prune {tmp_path / 'run'} --threshold T")
    shown = cli("inspect", tmp_path / "run")
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert text.count(" no ") >= 5 and "yes" not in text and "no field's gate reaches it" in text
    assert cli("prune", tmp_path / "run", "--threshold", "0").exit_code == 0
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())["fields"]["kept"]) == 5


@pytest.mark.parametrize("v, cut, text", [
    (1.996, 2, "1.996"), (2.004, 2, "2.004"), (1.9999, 2, "1.9999"), (2.0, 2, "2.00"), (1.5, 2, "1.50"),
    (-0.001, 2, "0.00"), (None, 2, "-"), (math.inf, 2, "inf"), (3, 5, "3"), (1.9999999, 2, "1.9999999"),
    (2.0000001, 2, "2.0000001"), (2 - 2 ** -52, 2, repr(2 - 2 ** -52))])
def test_a_score_never_reads_as_the_cut_it_is_on_the_other_side_of(v, cut, text):
    from lightfmp.cli.app import score_text
    assert score_text(v, cut) == text


def test_an_untested_field_has_no_score_and_a_spreadless_cost_is_beyond_any(tmp_path, monkeypatch):
    """inspect's rows: no score where the rule did not test a field (the last open one, those dropped before it),
    inf where its closing cost was positive with no spread (None in metrics.json); the chart draws no bar for the
    first (before: a bar of 0, below the cut, for a kept field) and a full hatched one for the second."""
    import matplotlib.axes
    from lightfmp import inspection
    from lightfmp.rundir import open_run
    r = _run(tmp_path, "--l0-lambda", "0.0001")  # the later flag wins: the gates stay open
    assert r.exit_code == 0, r.output
    run = open_run(tmp_path / "run")
    m = run.metrics()
    tested = [t["field"] for t in m["selection"]["search"]["tests"]]
    assert len(tested) >= 2
    m["selection"]["scores"][tested[0]] = None  # a positive cost with no spread
    untested = [tested[1]] + [n for n in m["fields"]["all"] if n not in tested]  # as the last open field would be
    del m["selection"]["scores"][tested[1]]
    monkeypatch.setattr(type(run), "metrics", lambda self: m)
    rows = {row["field"]: row for row in inspection.gate_rows(run)}
    assert rows[tested[0]]["score"] == math.inf and all(rows[n]["score"] is None for n in untested)
    drawn = []
    real = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar",
                        lambda self, x, heights, **kw: drawn.append(list(heights)) or real(self, x, heights, **kw))
    order = [row["field"] for row in inspection.gate_rows(run)]
    inspection.plot_gates(inspection.gate_rows(run), tmp_path / "g.png", cut=inspection.cut_line(run, []))
    scores = dict(zip(order, drawn[1]))
    assert all(math.isnan(scores[n]) for n in untested)
    assert scores[tested[0]] > max(v for n, v in scores.items() if n != tested[0] and not math.isnan(v))


GATES = {"a": 0.9, "b": 0.9, "noise": 0.1, "x": 0.5, "tags": 0.3}


def test_fields_with_equal_gates_are_ordered_by_their_open_probability(complete):
    """The table (and gates.png) lists fields by gate, most open first; between equal gates the higher L0 (open)
    probability comes first, then the name."""
    probs = {"a": 0.5, "b": 0.8, "noise": 0.1, "x": 0.5, "tags": 0.3}
    rows = _table(complete, GATES, open_probability=probs)
    assert [r["field"] for r in rows] == ["b", "a", "x", "tags", "noise"]


def test_a_run_without_open_probabilities_shows_them_as_one(complete):
    """metrics.json of an older run has no open_probability: the table shows L0 probability 1 (not 0) for every
    field."""
    rows = _table(complete, GATES)
    assert [r["l0_probability"] for r in rows] == [1.0] * 5


def test_a_field_is_said_shut_by_the_gates_alone_only_where_that_step_cut(complete):
    """The default rule's first step records the fields the gates alone would shut; the table says "shut by the
    gates alone" only where that step made the cut, not where it made none."""
    for cut in (True, False):
        rows = {r["field"]: r for r in _table(complete, GATES,
                                              selection={"gates_alone": {"fields": ["noise"], "cut": cut}})}
        assert rows["noise"].get("repeats") == ("shut by the gates alone" if cut else None), cut
        assert all("repeats" not in r for n, r in rows.items() if n != "noise")


@pytest.mark.parametrize("n, named", [(120, True), (121, False)])
def test_the_chart_names_its_bars_up_to_120_fields(tmp_path, monkeypatch, n, named):
    """gates.png names every bar for up to 120 fields; beyond that the bars have no names (the table has them)."""
    import matplotlib.axes
    from lightfmp import inspection
    drawn = []
    real = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar",
                        lambda self, x, h, *a, **k: (drawn.append(k.get("tick_label")), real(self, x, h, *a, **k))[1])
    rows = [{"field": f"f{i}", "gate": 0.5, "l0_probability": 0.5, "kept": True} for i in range(n)]
    inspection.plot_gates(rows, tmp_path / "g.png")
    (labels,) = drawn
    assert labels == ([f"f{i}" for i in range(n)] if named else None)
