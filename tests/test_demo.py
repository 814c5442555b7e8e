"""lightfmp/demo.py: decisions a mutation audit found no other test pinned (placed in tests/; MovieLens is never fetched:
the fetch is replaced by a small table of its columns, and where the runs' content does not matter, the pipeline's
`run` by a recorder)."""
import lightfmp.demo as demo_mod
from lightfmp import checkpoint
from helpers import cli
from test_hardening import movielens_like


def _record_runs(monkeypatch, tmp_path, stop_second=False):
    csv = movielens_like(tmp_path / "ml.csv", n=60)
    monkeypatch.setattr(demo_mod, "fetch_movielens_100k", lambda quiet=False: csv)
    calls = []

    def run(cfg, out, force=False, quiet=False):
        calls.append((cfg, out))
        if stop_second and len(calls) == 2:
            raise KeyboardInterrupt
        checkpoint.published(out)  # as the real run does once its result is written
        return {"cfg": cfg}
    monkeypatch.setattr(demo_mod, "run", run)
    return calls


def test_the_demo_trains_the_literatures_movielens_fields(tmp_path, monkeypatch):
    calls = _record_runs(monkeypatch, tmp_path)
    demo_mod.demo(tmp_path / "d", quiet=True)
    (lfmp, out1), (full, out2) = calls
    assert (out1, out2) == (tmp_path / "d" / "lightfmp", tmp_path / "d" / "all-fields")
    for cfg in (lfmp, full):
        assert cfg.data.label == "label"
        assert cfg.data.categorical == ["user_id", "item_id", "age", "gender", "occupation", "zip", "release_year",
                                        "hour", "weekday"]
        assert cfg.data.multi_hot == ["genres:|"]
    assert not lfmp.train.no_select and full.train.no_select


def test_the_comparison_run_drops_a_target_k_given_to_the_demo(tmp_path, monkeypatch):
    """demo(..., target_k=K): Light-FMP's run gets it; the all-fields run has no gates, so none (a --no-select run
    with a target is refused, after step 1 had trained)."""
    calls = _record_runs(monkeypatch, tmp_path)
    demo_mod.demo(tmp_path / "d", quiet=True, target_k=3)
    (lfmp, _), (full, _) = calls
    assert lfmp.train.target_k == 3
    assert full.train.target_k is None and full.prune.keep is None and full.train.no_select


def test_the_default_place_is_runs_demo_in_the_cache(tmp_path, monkeypatch):
    """`lightfmp demo --help`: default --out is $LIGHTFMP_HOME/runs/demo."""
    home = tmp_path / "home"
    monkeypatch.setenv("LIGHTFMP_HOME", str(home))
    calls = _record_runs(monkeypatch, tmp_path)
    demo_mod.demo(quiet=True, compare=False)
    assert [out for _, out in calls] == [home / "runs" / "demo" / "lightfmp"]


def test_a_stop_in_the_comparison_run_does_not_say_nothing_is_lost(tmp_path, monkeypatch):
    """Step 1's run is published; a Ctrl-C in step 2 loses the comparison run: the line must not say that
    everything was written and there is nothing to rerun."""
    _record_runs(monkeypatch, tmp_path, stop_second=True)
    checkpoint.reset_hint()
    try:
        r = cli("demo", "--out", tmp_path / "d", "--quiet")
        assert r.exit_code == 130, r.output
        lines = [line for line in r.output.strip().splitlines() if not line.startswith("demo:")]
        assert lines == ["interrupted: rerun the same command to start again"], r.output
    finally:
        checkpoint.reset_hint()
