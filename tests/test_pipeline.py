"""lightfmp/pipeline.py, cache.py and progress.py: decisions a mutation audit found no other test pinned (each test
fails on the change named in its docstring)."""
import json
import time

import numpy as np
import pytest

import lightfmp
import lightfmp.pipeline as pipeline
from helpers import cli, rewrite_metrics, unwarned, write_csv
from lightfmp import LightFMPError, RunConfig
from lightfmp.held_fields import MEAN_ROWS
from lightfmp.keep_rule import TEST_ROWS, spread
from lightfmp.progress import Reporter, counted
from lightfmp.rundir import open_run

FAST = dict(epochs=1, pretrain_epochs=3, batch_size=128, hidden=[16], embed_dim=4, subset=0.5,
            multi_hot=["tags:|"])


def _cfg(data, **kw):
    return RunConfig.of(data=str(data), label="label", **{**FAST, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("audit"), n=800)


@pytest.fixture(scope="module")
def deferred_run(data, tmp_path_factory):
    """A default run whose rule waits for phase 3's first epoch (--epochs 3), with the means the cut held recorded."""
    out = tmp_path_factory.mktemp("runs") / "deferred"
    samples = []
    real = pipeline.hold_at_means

    def recording(model, ids, fields):
        samples.append(np.array(ids, copy=True))
        return real(model, ids, fields)

    searched = []
    real_order = pipeline.keep_order

    def recording_order(model, schema, ids, labels, *a, **kw):
        searched.append(np.array(labels, copy=True))
        return real_order(model, schema, ids, labels, *a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "hold_at_means", recording)
    mp.setattr(pipeline, "keep_order", recording_order)
    try:
        metrics = lightfmp.run(_cfg(data, epochs=3, keep=2, patience=5), out, quiet=True)
    finally:
        mp.undo()
    return out, metrics, samples, searched


def test_the_rule_after_the_first_epoch_reads_validation_rows(deferred_run):
    """Mutant: the deferred search reads the remaining training rows instead of the validation rows."""
    out, m, _, searched = deferred_run
    assert m["selection"]["search"]["model"] == "after phase 3's first epoch"
    want = min(m["data"]["split"]["valid"], TEST_ROWS)
    assert m["selection"]["search"]["rows"] == m["phases"]["prune"]["rows"]
    valid = pipeline.run_data(open_run(out)).split_rows("valid").labels()
    assert len(searched) == 1 and np.array_equal(searched[0], valid[:want])


def test_the_cut_holds_its_dropped_fields_at_their_means_over_the_remaining_training_rows(deferred_run):
    """Mutant: the means of the held fields are taken over the validation rows (read by the rule and the final
    evaluation) instead of the rows the first epoch read."""
    out, m, samples, _ = deferred_run
    assert len(samples) == 1
    run = open_run(out)
    d = pipeline.run_data(run)
    _, rest = d.subset(run.config.train.subset, run.config.data.seed)
    first = json.loads((out / "history.json").read_text())["continue"]["first_epoch_fields"] \
        if "first_epoch_fields" in json.loads((out / "history.json").read_text())["continue"] else None
    names = [n for n in m["fields"]["all"] if m["gates"][n] > 0] if first is None else first
    want = rest.take(spread(len(rest), MEAN_ROWS)).select(names).arrays()[0]
    assert samples[0].shape == want.shape and np.array_equal(samples[0], want)


def test_seconds_total_is_the_sum_of_the_phases_and_wall_time_adds_up_over_train_and_prune(data, tmp_path):
    """Mutants: seconds_total leaves out the prune step; prune's seconds_wall drops phase 1's."""
    out = tmp_path / "r"
    lightfmp.train(_cfg(data), out, quiet=True)
    m = json.loads((out / "metrics.json").read_text())
    rewrite_metrics(out, {**m, "seconds_wall": 1000.0})  # phase 1's wall time as recorded
    m = lightfmp.prune(out, keep=2, continue_epochs=1, quiet=True)
    ph = m["phases"]
    assert m["seconds_total"] == pytest.approx(ph["pretrain"]["seconds"] + ph["prune"]["seconds"]
                                               + ph["continue"]["seconds"])
    assert ph["prune"]["seconds"] > 0
    assert 1000.0 < m["seconds_wall"] < 1000.0 + 600


def test_the_time_the_rule_takes_after_the_first_epoch_is_the_prune_steps_not_phase_3s(data, tmp_path, monkeypatch):
    """Mutant: phase 3's seconds also count the closing test run after its first epoch."""
    real_test, real_fit, fits = pipeline.closing_test, pipeline.fit, []

    def slow_test(*a, **kw):
        time.sleep(2.0)
        return real_test(*a, **kw)

    def timed_fit(*a, **kw):
        t = time.perf_counter()
        try:
            return real_fit(*a, **kw)
        finally:
            fits.append(time.perf_counter() - t)

    monkeypatch.setattr(pipeline, "closing_test", slow_test)
    monkeypatch.setattr(pipeline, "fit", timed_fit)
    m = lightfmp.run(_cfg(data, epochs=2), tmp_path / "r", quiet=True)
    ph = m["phases"]
    assert ph["prune"]["seconds"] >= 2.0
    continue_fits = sum(fits[1:])  # phase 1's fit first
    assert ph["continue"]["seconds"] < continue_fits + 1.5  # the test sleeps 2 s; phase 3's own overhead is less


def test_a_first_epoch_that_cut_nothing_is_a_candidate_of_phase_3(data, tmp_path):
    """Mutant: the first epoch is validated (a candidate) only where the cut held fields, not where it cut none."""
    n = 5  # every field: --keep of all of them cuts nothing after the first epoch
    out = tmp_path / "r"
    m = lightfmp.run(_cfg(data, epochs=3, keep=n, patience=5), out, quiet=True)
    assert len(m["fields"]["kept"]) == len(m["fields"]["all"]) == n
    h = json.loads((out / "history.json").read_text())["continue"]
    assert h["first_epoch"].get("held") is None  # nothing was cut, so nothing held
    first = h["first_epoch"]["epochs"][-1]
    assert first["valid"]["rows"] == m["valid"]["rows"]


def test_no_select_metrics_record_every_training_row_and_open_gates(data, tmp_path):
    """Mutants: --no-select's phases.continue.rows as 0; its gates as 0.0."""
    m = lightfmp.run(_cfg(data, no_select=True), tmp_path / "full", quiet=True)
    assert m["phases"]["continue"]["rows"] == m["data"]["split"]["train"] > 0
    assert m["gates"] == {n: 1.0 for n in m["fields"]["all"]}


def test_pretrain_metrics_report_the_best_epochs_validation(data, tmp_path):
    """Mutant: metrics.json's phases.pretrain.valid is the last epoch's, not the best epoch's (whose model is kept)."""
    out = tmp_path / "r"
    m = lightfmp.train(_cfg(data, pretrain_epochs=12, lr=0.05, patience=1), out, quiet=True)
    h = json.loads((out / "history.json").read_text())["pretrain"]
    pre = m["phases"]["pretrain"]
    assert pre["best_epoch"] < pre["epochs"], "the setting must stop past its best epoch"
    assert pre["valid"] == h["epochs"][pre["best_epoch"] - 1]["valid"]


def test_a_subset_of_exactly_one_batch_is_not_warned_about(data, tmp_path, capsys):
    """Mutant: `len(sub) <= batch_size` warns of "fewer than one batch" where the subset fills one batch exactly."""
    from lightfmp.dataset import load_dataset
    cfg = _cfg(data, pretrain_epochs=1)
    rows = len(load_dataset(cfg.data).subset(cfg.train.subset, cfg.data.seed)[0])
    capsys.readouterr()
    lightfmp.train(cfg.but(batch_size=rows), tmp_path / "one", quiet=True)
    assert "fewer than one batch" not in capsys.readouterr().err
    lightfmp.train(cfg.but(batch_size=rows + 1), tmp_path / "more", quiet=True)
    assert f"phase 1 trains on {rows:,} rows" in capsys.readouterr().err


def _final_eval_warning(data_path, monkeypatch, capsys, valid_ll, test_ll):
    from lightfmp.dataset import load_dataset
    cfg = _cfg(data_path)
    d = load_dataset(cfg.data)
    monkeypatch.setattr(pipeline, "evaluate", lambda model, rows, device: {
        "logloss": valid_ll if len(rows) == d.split_sizes()["valid"] else test_ll, "auc": 0.5, "rows": len(rows)})
    capsys.readouterr()
    pipeline.final_eval(None, d, "cpu", reporter=Reporter(quiet=True))
    return d, capsys.readouterr().err


def test_the_final_models_warning_compares_validation_logloss_with_the_training_label_rate(data, monkeypatch, capsys):
    """Mutants: the rate is the validation rows' label rate; the test rows' logloss is compared."""
    d, err = _final_eval_warning(data, monkeypatch, capsys, valid_ll=5.0, test_ll=0.01)
    rate = float(np.mean(d.split_rows("train").labels()))
    assert "has learnt less than nothing" in err and f"label rate {rate:.3g} for every row" in err, err
    assert f"{rate:.3g}" != f"{float(np.mean(d.split_rows('valid').labels())):.3g}"  # the setting tells them apart
    _, err = _final_eval_warning(data, monkeypatch, capsys, valid_ll=0.01, test_ll=5.0)
    assert "learnt less than nothing" not in err, err


def test_counted_nouns():
    """Mutant: `n <= 1` takes the singular (0 epoch)."""
    assert counted(0, "epoch") == "0 epochs" and counted(1, "batch", "batches") == "1 batch"
    assert counted(2000, "field") == "2,000 fields"


def test_a_long_log_line_stays_one_line(capsys):
    """Mutant: log lines wrapped at the console width (a log file's line cut in pieces)."""
    Reporter().log("word " * 60)
    assert capsys.readouterr().err.strip() == ("word " * 60).strip()


def test_an_epoch_restored_from_its_checkpoint_is_said_so(capsys):
    """Mutant: a restored epoch's line has no status at all."""
    rep = Reporter()
    with rep._lines("phase", 2, 3) as (_, next_epoch, set_status):
        set_status("loss 0.5")
        next_epoch()
        next_epoch()  # no status given: restored
    err = capsys.readouterr().err
    assert "phase: epoch 1/2 loss 0.5" in err and "phase: epoch 2/2 restored from the checkpoint" in err, err


def test_a_download_progress_line_is_silenced_by_quiet(capsys):
    """Mutant: `say` prints with quiet too."""
    from lightfmp.cache import say
    say(True, "fetching")
    assert capsys.readouterr().err == ""
    say(False, "fetching")
    assert capsys.readouterr().err == "[lightfmp] fetching\n"


def test_a_subset_of_every_training_row_continues_on_all_of_them(data, tmp_path):
    """Mutant: with --subset 1.0 (no rows left over) phase 3 is not given the training split instead."""
    out = tmp_path / "r"
    lightfmp.train(_cfg(data, subset=1.0), out, quiet=True)
    m = lightfmp.prune(out, keep=2, continue_epochs=1, quiet=True)
    h = json.loads((out / "history.json").read_text())["continue"]
    train = m["data"]["split"]["train"]
    assert m["phases"]["pretrain"]["rows"] == train
    assert m["phases"]["continue"]["rows"] == h["rows"] == train and len(h["epochs"]) == 1


def test_prune_removes_the_gate_chart_of_the_earlier_kept_set(data, tmp_path):
    """Mutant: prune leaves gates.png, which shows the kept set before it (README: prune removes it)."""
    out = tmp_path / "r"
    lightfmp.train(_cfg(data, pretrain_epochs=1), out, quiet=True)
    assert cli("inspect", out).exit_code == 0 and (out / "gates.png").is_file()
    lightfmp.prune(out, keep=2, continue_epochs=0, quiet=True)
    assert not (out / "gates.png").exists()


def test_prune_records_the_rule_it_used_and_names_a_threshold_in_the_phase(data, tmp_path):
    """Mutants: phases.continue.rows counts rows phase 3 never read at --continue-epochs 0; config.yaml keeps the run's earlier rule after a prune with another; phases.prune.rule says "closing
    test" for --threshold T."""
    import yaml
    out = tmp_path / "r"
    lightfmp.train(_cfg(data, pretrain_epochs=1), out, quiet=True)
    m = lightfmp.prune(out, threshold=0.0, continue_epochs=0, quiet=True)
    assert m["phases"]["prune"]["rule"] == "threshold=0.0"
    assert m["phases"]["continue"]["rows"] == 0 and m["phases"]["continue"]["epochs"] == 0  # phase 3 skipped
    assert yaml.safe_load((out / "config.yaml").read_text())["prune"]["threshold"] == 0.0
    m = lightfmp.prune(out, keep=2, continue_epochs=0, quiet=True)
    assert m["phases"]["prune"]["rule"] == "keep=2"
    doc = yaml.safe_load((out / "config.yaml").read_text())["prune"]
    assert doc["keep"] == 2 and doc.get("threshold") is None


def test_the_deferred_order_names_the_fields_phase_1_shut_last(data, tmp_path, monkeypatch):
    """Mutant: the fields cut before phase 3's first epoch are not appended to the search order (the order must name
    every field: bench ranks every field by it). Phase 1 is made to shut its least open field."""
    real = pipeline.open_after_phase1
    shut = []

    def one_shut(log_alpha, z, keep):
        order = list(real(log_alpha, z, keep))
        shut.append(order.pop())
        shut.append(len(order))
        return order

    monkeypatch.setattr(pipeline, "open_after_phase1", one_shut)
    m = lightfmp.run(_cfg(data, epochs=2, keep=2), tmp_path / "r", quiet=True)
    order = m["selection"]["search"]["order"]
    assert sorted(order) == sorted(m["fields"]["all"]) and m["fields"]["all"][shut[0]] in order[shut[1]:]


def test_init_seed_leaves_the_gate_hold_out_on_the_split_seed(data, tmp_path, monkeypatch):
    """Mutant: phase 1's gate hold-out (a row assignment, like the split) is drawn with --init-seed, which the README
    says reseeds only initialisation, batch order, dropout and gate noise."""
    seen = []

    class Stop(Exception):
        pass

    def capture(*a, **kw):
        seen.append((kw["seed"], kw["split_seed"]))
        raise Stop

    monkeypatch.setattr(pipeline, "fit", capture)
    with pytest.raises(Stop):
        lightfmp.train(_cfg(data, seed=3, init_seed=11), tmp_path / "r", quiet=True)
    assert seen == [(11, 3)]


def test_each_fit_of_a_run_draws_its_own_random_stream(data, tmp_path, monkeypatch):
    """Mutant: phase 3's later epochs reuse its first epoch's seed (the same batch order and dropout again)."""
    real, seeds = pipeline.fit, []

    def recording(*a, **kw):
        seeds.append(kw["seed"])
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "fit", recording)
    lightfmp.run(_cfg(data, epochs=3, keep=2, init_seed=4), tmp_path / "r", quiet=True)
    assert seeds == [4, 5, 6]  # phase 1, phase 3's first epoch, its later epochs


def test_phase_1_validates_on_every_row_of_the_rarer_label_and_as_many_of_the_others():
    """`label_alike`: every row of the rarest label and as many of each other's, drawn with the seed given (the
    keep rules' `measured_rows`); every row where that is all of them, or where one label alone is there. Mutants:
    the rows unsampled; the draw not seeded; the commoner label whole."""
    from lightfmp.closed_fields import measured_rows
    from lightfmp.rows import ArrayRows
    y = (np.arange(1000) % 10 == 3).astype(np.float32)  # 100 positives, 900 negatives
    ids = np.arange(1000, dtype=np.int32)[:, None]
    got = pipeline.label_alike(ArrayRows(ids, y), 7)
    picked = got.arrays()[0][:, 0]
    assert len(got) == 200 and got.labels().sum() == 100 and np.array_equal(np.sort(picked), picked)
    assert np.array_equal(picked, measured_rows(y, 1.0, np.random.default_rng(7)))
    assert not np.array_equal(picked, pipeline.label_alike(ArrayRows(ids, y), 8).arrays()[0][:, 0])
    for labels in [np.arange(10) % 2, np.ones(10)]:  # as many of each already; one label
        assert len(pipeline.label_alike(ArrayRows(ids[:10], labels), 0)) == 10


def test_phase_1_reads_the_label_alike_validation_rows_and_phase_3_every_one(data, tmp_path):
    """history.json: phase 1's validation reads every row of the rarer label and as many of the other's, phase 3's
    every validation row. Mutant: phase 1 reading every validation row."""
    from lightfmp.dataset import load_dataset
    cfg = _cfg(data, epochs=2)
    labels = load_dataset(cfg.data).split_rows("valid").labels()
    fewer = int(min(np.sum(labels == 1), np.sum(labels == 0)))
    assert 0 < 2 * fewer < len(labels)
    lightfmp.run(cfg, tmp_path / "r", quiet=True)
    h = json.loads((tmp_path / "r" / "history.json").read_text())
    assert {e["valid"]["rows"] for e in h["pretrain"]["epochs"]} == {2 * fewer}
    assert {e["valid"]["rows"] for e in h["continue"]["epochs"]} == {len(labels)}
