"""The CLI end to end on small generated files, and the bad inputs it must refuse with one line."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
import torch
from typer.testing import CliRunner

from lightfmp.cli.app import app
from lightfmp.datasets import FETCHERS
from lightfmp.encoding import stable_hash
from lightfmp.models.dense import cpu_gemm_library
from lightfmp.splits import SplitRule

from helpers import make_frame, one_line_error, rewrite_metrics, write_csv
from lightfmp.errors import LightFMPError

runner = CliRunner()
FAST = ["--pretrain-epochs", "3", "--epochs", "1", "--batch-size", "128", "--hidden", "16", "--embed-dim", "4",
        "--quiet"]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("d"), n=800)


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pre"
    r = cli("train", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, "--subset", "0.5", *FAST)
    assert r.exit_code == 0, r.output
    return out


def test_train_then_prune_then_inspect(pretrained, tmp_path):
    info = json.loads((pretrained / "run.json").read_text())
    assert info["state"] == "pretrained" and info["select"] is True
    r = cli("prune", pretrained, "--keep", "3", "--continue-epochs", "1", "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((pretrained / "metrics.json").read_text())
    assert len(m["fields"]["kept"]) == 3
    assert sorted(m["fields"]["kept"] + m["fields"]["dropped"]) == sorted(m["fields"]["all"])
    for key in ("auc", "logloss"):
        assert 0 <= m["test"][key] and np.isfinite(m["test"][key])
    assert m["params"]["after"] < m["params"]["before"]
    assert m["phases"]["continue"]["rows"] + m["phases"]["pretrain"]["rows"] == m["data"]["split"]["train"]
    assert m["test"]["rows"] == m["data"]["split"]["test"]
    assert set(m["gates"]) == set(m["fields"]["all"])
    r = cli("inspect", pretrained)
    assert r.exit_code == 0, r.output
    assert "L0 probability" in r.output
    assert (pretrained / "gates.png").read_bytes()[:4] == b"\x89PNG"
    # the rule and its cut: the smallest kept gate, and no dropped field above it
    sel = m["selection"]
    assert sel["rule"].startswith("first 3 of the forward order") and sel["cut"] == 3
    assert sel["scores"] == {n: i + 1 for i, n in enumerate(sel["search"]["order"])}
    assert sorted(sel["search"]["order"][:3]) == sorted(m["fields"]["kept"])
    assert sorted(sel["search"]["order"]) == sorted(m["fields"]["all"])
    assert "kept by: first 3 of the forward order" in r.output
    text = " ".join(r.output.split())
    assert "forward order" in text.split("kept by")[0] and "(cut at 3: forward order position)" in text, text


def test_default_rule_is_the_closing_test(data, tmp_path):
    """Without --keep / --threshold: phase 1 stops at its best validation epoch, and prune keeps the fields whose
    closing (least open gate first) costs more than two standard errors, on its own or with the fields closed before
    it; inspect shows each field's score and the cut."""
    pretrained = tmp_path / "pre"
    r = cli("train", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", pretrained,
            "--subset", "0.5", *FAST)
    assert r.exit_code == 0, r.output
    m = json.loads((pretrained / "metrics.json").read_text())
    pre = m["phases"]["pretrain"]
    assert 1 <= pre["best_epoch"] <= pre["epochs"]
    r = cli("inspect", pretrained)  # before pruning: the default rule is not decided yet
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "decided by `lightfmp prune`" in text, r.output
    assert "(on the phase-1 model)" in text  # --epochs 1: phase 3 has one epoch, the rule decides before it
    rows = [line for line in r.output.splitlines() if line.startswith("│")]
    assert len(rows) == len(m["fields"]["all"]) and all(line.rstrip(" │").endswith("-") for line in rows), r.output
    doc = yaml.safe_load((pretrained / "config.yaml").read_text())
    doc["prune"]["continue_epochs"] = 3
    (pretrained / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    text = " ".join(cli("inspect", pretrained).output.split())  # three epochs: it decides after the first
    assert "on the model after phase 3's first epoch" in text and "(on the phase-1 model)" not in text, text
    edits = [("keep", 30, "keep 30: must be between 1 and the number of fields")] + \
        ([] if torch.cuda.is_available() else [("device", "cuda", "--device cuda: no CUDA device")])
    for key, value, said in edits:  # an edit of the file is named as the file's, not as a flag nobody passed
        edited = yaml.safe_load((pretrained / "config.yaml").read_text())
        edited["prune" if key == "keep" else "train"][key] = value
        (pretrained / "config.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        r = cli("prune", pretrained, "--continue-epochs", "1", "--quiet")
        assert r.exit_code == 2 and r.output.strip().startswith(f"error: {pretrained / 'config.yaml'}: {said}"), \
            r.output
        (pretrained / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    r = cli("prune", pretrained, "--continue-epochs", "1", "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((pretrained / "metrics.json").read_text())
    sel = m["selection"]
    search = sel["search"]
    assert sel["rule"].startswith("every field open, then, least open gate first") and sel["cut"] == 2.0
    assert search["order"] == sorted(m["fields"]["all"], key=lambda n: -m["log_alpha"][n])
    assert sorted(m["fields"]["kept"]) == sorted(search["kept"])
    for t in search["tests"]:
        assert t["closed"] == (t["field"] not in search["kept"])
        own, together = t["cost"] / t["se"], t["set_cost"] / t["set_se"]
        assert t["closed"] == (own <= 2 and together <= 2) and sel["scores"][t["field"]] == pytest.approx(
            max(own, together))
    assert m["phases"]["prune"]["rule"] == "closing test"
    assert m["phases"]["prune"]["rows"] == search["rows"] == m["valid"]["rows"] > 0  # the validation rows it read
    r = cli("inspect", pretrained)
    text = " ".join(r.output.split())  # the table and the line wrap at the terminal's width
    assert r.exit_code == 0 and "closing cost (SE)" in text, text
    assert "(cut at 2: closing cost in standard errors)" in text, text
    assert (pretrained / "gates.png").read_bytes()[:4] == b"\x89PNG"


def test_default_rule_decides_after_phase_3s_first_epoch(data, tmp_path):
    """With two or more phase-3 epochs the fields phase 1 shut go first, phase 3's first epoch reads every other
    field, and the closing test runs on that model (least open gate of phase 1 first); the fields it closes are cut
    out before phase 3 goes on, and the final model reads exactly the kept fields."""
    from lightfmp.rundir import open_run
    pretrained = tmp_path / "pre"
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", pretrained, "--subset", "0.5",
            *FAST, "--epochs", "3")
    assert r.exit_code == 0, r.output
    m = json.loads((pretrained / "metrics.json").read_text())
    sel, names = m["selection"], m["fields"]["all"]
    search = sel["search"]
    assert search["model"] == "after phase 3's first epoch" and "after phase 3's first epoch" in sel["rule"]
    opened = [n for n in names if m["gates"][n] > 0]
    assert search["order"] == sorted(names, key=lambda n: -m["log_alpha"][n])  # the fields cut first come last
    assert set(names) - set(opened) <= set(m["fields"]["dropped"])
    tested = [n for n in search["order"] if n in opened][::-1]  # least open first
    assert [t["field"] for t in search["tests"]] == tested[:len(search["tests"])]
    for t in search["tests"]:
        assert t["closed"] == (t["field"] not in m["fields"]["kept"])
    assert sorted(search["kept"]) == sorted(m["fields"]["kept"])
    h = json.loads((pretrained / "history.json").read_text())["continue"]
    assert len(h["first_epoch"]["epochs"]) == 1 and 1 <= len(h["epochs"]) <= 2
    assert m["phases"]["continue"]["epochs"] == 1 + len(h["epochs"])
    model, schema = open_run(pretrained).load_final()
    assert schema.names == m["fields"]["kept"] and model.embedding.num_fields == len(schema.names)


@pytest.mark.parametrize("rule", [[], ["--threshold", "0"]])
def test_phase_3_reads_the_other_rows_first_then_every_training_row(data, tmp_path, rule):
    """Phase 3's first epoch reads the training rows phase 1 did not use (after it every training row has been
    read once); its later epochs read the whole training split, whatever the rule. With one phase-3 epoch, only
    the other rows."""
    out = tmp_path / "run"
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, "--subset", "0.3",
            *rule, *FAST, "--epochs", "3", "--patience", "5")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    h = json.loads((out / "history.json").read_text())["continue"]
    subset, train = m["phases"]["pretrain"]["rows"], h["rows"]
    assert 0 < subset < train and h["first_epoch"]["rows"] == train - subset
    assert m["phases"]["continue"]["rows"] == train and len(h["epochs"]) == 2
    assert ("first_epoch_seconds" in m["phases"]["continue"]) == (not rule)  # selection's cost where the rule waited
    r = cli("prune", out, "--continue-epochs", "1", "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    h = json.loads((out / "history.json").read_text())["continue"]
    assert m["phases"]["continue"]["rows"] == h["rows"] == train - subset and "first_epoch" not in h


def test_keep_k_decides_after_phase_3s_first_epoch(data, tmp_path):
    """--keep K with two or more phase-3 epochs: the forward search runs on the model after phase 3's first epoch
    (on the fields whose gates phase 1 left open) and the first K of its order are the fields the final model reads."""
    from lightfmp.rundir import open_run
    out = tmp_path / "run"
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, "--subset", "0.5",
            "--keep", "2", *FAST, "--epochs", "3")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    sel = m["selection"]
    assert sel["search"]["model"] == "after phase 3's first epoch" and "after phase 3's first epoch" in sel["rule"]
    assert sel["rule"].startswith("first 2 of the forward order") and sel["cut"] == 2
    assert sorted(sel["search"]["order"][:2]) == sorted(m["fields"]["kept"]) and len(m["fields"]["kept"]) == 2
    assert sorted(sel["search"]["order"]) == sorted(m["fields"]["all"])  # bench ranks every field by it
    assert m["phases"]["continue"]["first_epoch_seconds"] > 0
    assert open_run(out).load_final()[1].names == m["fields"]["kept"]


@pytest.mark.parametrize("backbone", ["deepfm", "dcnv2"])
def test_the_cut_after_the_first_epoch_is_a_candidate_where_its_dropped_fields_can_be_held(data, tmp_path, backbone):
    """After the rule's cut the pruned model, its dropped fields held at their means (lightfmp.held_fields), is
    validated and stays the best until a phase-3 epoch beats it; DCNv2, whose cut cannot hold them, goes on as
    before (its first epoch is not a candidate)."""
    from lightfmp.pipeline import run_data
    from lightfmp.rundir import open_run
    from lightfmp.training import validate
    out = tmp_path / "run"
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, "--subset", "0.5",
            "--keep", "2", "--backbone", backbone, *FAST, "--epochs", "3", "--patience", "5")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    h = json.loads((out / "history.json").read_text())["continue"]
    first = h["first_epoch"]["epochs"][-1]
    assert len(m["fields"]["kept"]) == 2 < len([n for n in m["fields"]["all"] if m["gates"][n] > 0])  # a cut
    assert h["first_epoch"]["held"] == (backbone == "deepfm")  # history says whether the cut was held
    if backbone == "dcnv2":
        assert "valid" not in first and h["best_epoch"] >= 1
        return
    assert first["valid"]["rows"] == m["valid"]["rows"] and len(h["epochs"]) == 2
    # the final model is the best candidate's, the cut's included (best epoch 0), or the mean of the tied ones
    records = [first["valid"]] + [e["valid"] for e in h["epochs"]]
    averaged = h.get("averaged", {})
    run = open_run(out)
    model, schema = run.load_final()
    rec, _ = validate(model, run_data(run).split_rows("valid").select(schema.names), "cpu")
    want = averaged["valid"] if averaged.get("used") else records[h["best_epoch"]]
    assert rec["logloss"] == pytest.approx(want["logloss"], abs=1e-7)
    shown = " ".join(cli("inspect", out).output.split())  # inspect says which model the run kept
    if averaged.get("used"):
        assert m["phases"]["continue"]["averaged_epochs"] == [e + 1 for e in averaged["epochs"]]
        assert (f"final model: the mean of phase 3's epochs {', '.join(str(e + 1) for e in averaged['epochs'])} of 3"
                in shown), shown
    else:
        assert "averaged_epochs" not in m["phases"]["continue"]
        assert ("final model: the cut after phase 3's first epoch, its dropped fields held at their means (no later "
                "epoch of 3 beat it)" if h["best_epoch"] == 0 else
                f"final model: phase 3's epoch {h['best_epoch'] + 1} of 3 (its first epoch counted)") in shown, shown
    # a history whose phase is no object is refused by the one loader, naming the file and the phase
    whole = json.loads((out / "history.json").read_text())
    rewrite_metrics(out, {**whole, "continue": 5}, "history")
    one_line_error(cli("inspect", out), f"{out / 'history.json'}: 'continue' must be an object, not int")


def test_prune_refuses_a_keep_outside_the_fields_before_any_work(pretrained):
    for k in ("0", "99"):
        r = cli("prune", pretrained, "--keep", k, "--quiet")
        assert r.exit_code != 0 and "Traceback" not in r.output, r.output
        assert f"--keep {k}" in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_run_and_no_select_write_the_contract_keys(data, tmp_path):
    keys = ["fields.all", "fields.kept", "fields.dropped", "gates", "test.auc", "test.logloss", "valid.auc",
            "params.before", "params.after", "phases.pretrain.rows", "phases.pretrain.seconds", "phases.prune.seconds",
            "phases.continue.rows", "phases.continue.seconds", "seconds_total"]
    for extra in ([], ["--no-select"]):
        out = tmp_path / ("full" if extra else "fmp")
        r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, *FAST, *extra)
        assert r.exit_code == 0, r.output
        m = json.loads((out / "metrics.json").read_text())
        for k in keys:
            node = m
            for part in k.split("."):
                node = node[part]
        assert (out / "model.safetensors").exists() and (out / "schema.json").exists()
        assert (out / "config.yaml").exists()
        # what the numbers depend on beyond config and data: the threads of each phase (this process's), torch, device
        # and the dense layers' library
        threads = torch.get_num_threads()
        gemm = cpu_gemm_library()
        assert m["runtime"] == {"torch": torch.__version__, "device": "cpu", "threads_train": threads,
                                "cpu_gemm_train": gemm,
                                **({} if extra else {"threads_prune": threads, "cpu_gemm_prune": gemm})}, m["runtime"]
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert full["fields"]["kept"] == full["fields"]["all"] and full["phases"]["pretrain"]["rows"] == 0
    r = cli("prune", tmp_path / "full")
    assert r.exit_code == 2 and "--no-select" in r.output


def test_same_seed_same_gates(data, tmp_path):
    gates = []
    for name in ("s1", "s2"):
        r = cli("train", "--data", data, "--label", "label", "--out", tmp_path / name, *FAST)
        assert r.exit_code == 0, r.output
        gates.append(json.loads((tmp_path / name / "metrics.json").read_text())["gates"])
    assert gates[0] == gates[1]


def test_init_seed_moves_training_only(data, tmp_path):
    """--init-seed reseeds initialisation, batches and gates and nothing else: given as --seed it is the run without
    it, bit for bit; given otherwise the split, the subset and the test rows are the same and the training is not."""
    out = {}
    for name, extra in (("plain", []), ("same", ["--init-seed", "3"]), ("other", ["--init-seed", "7"])):
        r = cli("run", "--data", data, "--label", "label", "--seed", "3", "--out", tmp_path / name, *FAST, *extra)
        assert r.exit_code == 0, r.output
        out[name] = (json.loads((tmp_path / name / "metrics.json").read_text()),
                     json.loads((tmp_path / name / "run.json").read_text()),
                     (tmp_path / name / "model.safetensors").read_bytes())
    (plain, plain_run, plain_w), (same, _, same_w) = out["plain"], out["same"]
    other, other_run, other_w = out["other"]
    assert same["gates"] == plain["gates"] and same["test"] == plain["test"] and same_w == plain_w
    assert other_run["split"] == plain_run["split"] and other["data"] == plain["data"]
    assert other["phases"]["pretrain"]["rows"] == plain["phases"]["pretrain"]["rows"]  # the same subset
    assert other["test"]["rows"] == plain["test"]["rows"] and other["gates"] != plain["gates"]
    r = cli("run", "--data", data, "--label", "label", "--init-seed", "-1", "--out", tmp_path / "bad", *FAST)
    assert r.exit_code != 0 and "--init-seed" in r.output and not (tmp_path / "bad").exists()


def test_config_file_keys_mirror_flags_and_flags_win(data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {data}\nlabel: label\nembed-dim: 5\nhidden: '8'\npretrain_epochs: 2\nepochs: 1\nno_select: true\n")
    r = cli("run", "--config", cfg, "--embed-dim", "3", "--out", tmp_path / "r", "--quiet")
    assert r.exit_code == 0, r.output
    import yaml
    resolved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert resolved["model"]["embed_dim"] == 3 and resolved["model"]["hidden"] == [8]
    assert resolved["train"]["no_select"] is True


def test_a_finished_runs_config_takes_later_flags(data, tmp_path):
    """A run's config.yaml records what was given, not what --epochs derived: phase 3's epochs are recorded only
    where --continue-epochs set them, so `run --config RUN/config.yaml --epochs N` plans N phase-3 epochs, and
    bench (which has no --continue-epochs) takes the file."""
    import yaml
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", tmp_path / "a", *FAST,
            "--epochs", "2", "--patience", "0", "--quiet")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["prune"].get("continue_epochs") is None
    r = cli("run", "--config", tmp_path / "a" / "config.yaml", "--epochs", "3", "--out", tmp_path / "b", "--quiet")
    assert r.exit_code == 0, r.output
    phase3 = json.loads((tmp_path / "b" / "history.json").read_text())["continue"]
    assert "first_epoch" in phase3 and len(phase3["epochs"]) == 2  # its first epoch, then two (--patience 0)
    r = cli("bench", "--config", tmp_path / "a" / "config.yaml", "--k", "1", "--methods", "random", "--seeds", "0",
            "--json", tmp_path / "b.json", "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", tmp_path / "c", *FAST,
            "--epochs", "2", "--continue-epochs", "1", "--quiet")
    assert r.exit_code == 0, r.output  # given: recorded, so that the file reproduces the run
    assert yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())["prune"]["continue_epochs"] == 1
    r = cli("prune", tmp_path / "a", "--continue-epochs", "2", "--quiet")  # given, if equal to --epochs too
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["prune"]["continue_epochs"] == 2


def test_positive_value_and_boolean_labels(tmp_path):
    df = make_frame(400)
    df["label"] = np.where(df["label"] == 1, "click", "view")
    df.to_csv(tmp_path / "p.csv", index=False)
    r = cli("run", "--data", tmp_path / "p.csv", "--label", "label", "--positive", "click", "--no-select",
            "--out", tmp_path / "r1", *FAST)
    assert r.exit_code == 0, r.output
    df["label"] = df["label"] == "click"
    df.to_parquet(tmp_path / "b.parquet")
    r = cli("run", "--data", tmp_path / "b.parquet", "--label", "label", "--no-select", "--out", tmp_path / "r2", *FAST)
    assert r.exit_code == 0, r.output


def test_time_column_split_orders_rows(tmp_path):
    df = make_frame(400)
    df["ts"] = np.arange(400)[::-1]
    df.to_csv(tmp_path / "t.csv", index=False)
    r = cli("run", "--data", tmp_path / "t.csv", "--label", "label", "--time-column", "ts", "--no-select",
            "--out", tmp_path / "r", *FAST)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "ts" not in m["fields"]["all"]


def test_group_column_split_is_recorded_and_prune_reads_it_back(tmp_path):
    """`train --group-column user` then `prune` (no split flags): prune splits as the run recorded, so its validation
    and test rows are train's; the test rows' users are never trained on."""
    df = make_frame(600)
    df["user"] = [f"u{v}" for v in np.random.default_rng(3).integers(0, 50, 600)]
    df.to_csv(tmp_path / "g.csv", index=False)
    r = cli("train", "--data", tmp_path / "g.csv", "--label", "label", "--group-column", "user", "--out",
            tmp_path / "r", *FAST)
    assert r.exit_code == 0, r.output
    split = json.loads((tmp_path / "r" / "run.json").read_text())["split"]
    assert split["rule"] == "group" and split["group_column"] == "user"
    r = cli("prune", tmp_path / "r", "--keep", "2", "-q")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "user" not in m["fields"]["all"] and m["test"]["rows"] > 0
    groups = SplitRule.from_dict(split).hash_codes(stable_hash([f"u{g}" for g in range(50)]))
    test_users = {f"u{g}" for g in range(50) if groups[g] == 2}
    assert m["test"]["rows"] == int(df["user"].isin(test_users).sum())


def test_unseen_categories_at_evaluation_map_to_oov(tmp_path):
    df = make_frame(600)
    # the test rows (last 10% of a time order) hold values never seen in training
    df["ts"] = np.arange(600)
    df.loc[540:, "a"] = "brand-new"
    df.to_csv(tmp_path / "u.csv", index=False)
    r = cli("run", "--data", tmp_path / "u.csv", "--label", "label", "--time-column", "ts", "--out", tmp_path / "r",
            *FAST)
    assert r.exit_code == 0, r.output


def test_python_dash_m_works_like_the_command():
    r = subprocess.run([sys.executable, "-m", "lightfmp", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "prune" in r.stdout and "train" in r.stdout


@pytest.mark.parametrize("cmd", ["train", "prune", "run", "inspect", "demo", "data"])
def test_every_command_has_help(cmd):
    r = cli(cmd, "--help")
    assert r.exit_code == 0 and "Usage" in r.output


def test_data_fetch_lists_and_dispatches_through_the_registry(monkeypatch, tmp_path):
    assert {"movielens-100k", "kddcup04-bio"} <= set(FETCHERS)
    r = runner.invoke(app, ["data", "fetch", "--help"], terminal_width=200)
    assert r.exit_code == 0
    for name in FETCHERS:
        assert name in r.output
    r = cli("data", "fetch", "no-such-set")
    assert r.exit_code == 2
    msg = r.output.strip()
    assert len(msg.splitlines()) == 1 and "'no-such-set'" in msg, msg
    for name in FETCHERS:
        assert name in msg
    calls = []

    def fake(home=None, quiet=False):
        calls.append(home)
        return tmp_path / "prepared.csv"
    monkeypatch.setitem(FETCHERS, "kddcup04-bio", fake)
    r = runner.invoke(app, ["data", "fetch", "kddcup04-bio", "--home", str(tmp_path)], terminal_width=400)
    assert r.exit_code == 0, r.output
    assert calls == [tmp_path] and "prepared.csv" in r.output
    old = tmp_path / "prepared.csv"  # a file already there, written earlier: reused, and said so
    old.write_text("x\n")
    os.utime(old, (time.time() - 60, time.time() - 60))
    r = runner.invoke(app, ["data", "fetch", "kddcup04-bio", "--home", str(tmp_path)], terminal_width=400)
    assert r.exit_code == 0 and r.output.startswith("already in the cache:")

    def offline(home=None, quiet=False):
        raise RuntimeError("could not get it; no network")
    monkeypatch.setitem(FETCHERS, "movielens-100k", offline)
    r = cli("data", "fetch", "movielens-100k")
    assert r.exit_code == 2 and "no network" in r.output and len(r.output.strip().splitlines()) == 1


# ---- bad input: one line naming the file / column / value, exit != 0, nothing written ----------------------------
def bad(tmp_path, df_or_text, args, expect, suffix=".csv"):
    p = tmp_path / f"bad{suffix}"
    if isinstance(df_or_text, (str, bytes)):
        p.write_bytes(df_or_text if isinstance(df_or_text, bytes) else df_or_text.encode())
    else:
        df_or_text.to_csv(p, index=False)
    out = tmp_path / "out"
    r = cli("run", "--data", p, *args, "--out", out, *FAST)
    assert r.exit_code != 0
    msg = r.output.strip()
    assert len(msg.splitlines()) == 1, msg
    assert expect in msg, msg
    assert not out.exists()
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".out")]  # no temp leftovers


def test_missing_label_column(tmp_path):
    bad(tmp_path, make_frame(100), ["--label", "clicked"], "--label 'clicked' is not one of its columns")


def test_non_binary_label(tmp_path):
    df = make_frame(100)
    df.loc[5, "label"] = 3
    bad(tmp_path, df, ["--label", "label"], "not binary: value '3'")


def test_named_column_absent(tmp_path):
    bad(tmp_path, make_frame(100), ["--label", "label", "--categorical", "a,nope"], "column 'nope'")


def test_empty_file(tmp_path):
    bad(tmp_path, "", ["--label", "label"], "empty file")
    bad(tmp_path, "a,b,label\n", ["--label", "label"], "no data rows")


def test_corrupt_parquet(tmp_path):
    bad(tmp_path, b"PAR1 this is not parquet", ["--label", "label"], "cannot read Parquet", suffix=".parquet")


def test_all_nan_column(tmp_path):
    df = make_frame(100)
    df["blank"] = np.nan
    bad(tmp_path, df, ["--label", "label"], "'blank' is entirely empty")


def test_numeric_column_without_a_finite_number(tmp_path):
    """Bucket edges come from finite values: a column of infinities alone would put +inf and -inf in one bucket."""
    df = make_frame(100)
    df["signs"] = np.where(df["label"] == 1, np.inf, -np.inf)
    df.loc[3, "signs"] = np.nan
    bad(tmp_path, df, ["--label", "label", "--numeric", "signs"], "numeric column 'signs' holds no finite number")
    df["signs"] = np.arange(100.0)  # finite: one bucket asked for (no edges) is no such column
    df.to_csv(tmp_path / "ok.csv", index=False)
    r = cli("train", "--data", tmp_path / "ok.csv", "--label", "label", "--numeric", "signs", "--num-buckets", "1",
            "--out", tmp_path / "ok", *FAST)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("k", ["0", "9"])
def test_keep_out_of_range(tmp_path, k):
    bad(tmp_path, make_frame(100), ["--label", "label", "--keep", k], f"--keep {k}")


def test_prune_of_non_run_and_newer_format(pretrained, tmp_path):
    r = cli("prune", tmp_path)
    assert r.exit_code == 2 and "not a lightfmp run" in r.output
    import shutil
    newer = tmp_path / "newer"
    shutil.copytree(pretrained, newer)
    info = json.loads((newer / "run.json").read_text())
    info["format_version"] = 99
    (newer / "run.json").write_text(json.dumps(info))
    r = cli("prune", newer)
    assert r.exit_code == 2 and "newer" in r.output
    info["format_version"] = 3  # every other key a run's, but not lightfmp's format marker
    (newer / "run.json").write_text(json.dumps({**info, "format": "other-tool"}))
    r = cli("prune", newer)
    assert r.exit_code == 2 and "not a lightfmp run (run.json has no format 'lightfmp-run')" in r.output, r.output
    r = cli("prune", pretrained, "--keep", "0")
    assert r.exit_code == 2 and "--keep 0" in r.output


def test_existing_out_refused_without_force(data, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("run", "--data", data, "--label", "label", "--out", out, *FAST)
    assert r.exit_code == 2 and "--force" in r.output
    assert (out / "keep.txt").read_text() == "mine"


def test_config_values_are_typed_and_bad_ones_named(data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {data}\nlabel: label\nlr: 1e-3\nno_select: true\nepochs: '1'\nhidden: 8\n")
    r = cli("run", "--config", cfg, "--out", tmp_path / "ok", "--quiet", "--embed-dim", "4")
    assert r.exit_code == 0, r.output
    import yaml
    resolved = yaml.safe_load((tmp_path / "ok" / "config.yaml").read_text())
    assert resolved["train"]["lr"] == 1e-3 and resolved["train"]["epochs"] == 1 and resolved["model"]["hidden"] == [8]
    cfg.write_text(f"data: {data}\nlabel: label\nepochs: ten\n")
    r = cli("run", "--config", cfg, "--out", tmp_path / "bad", "--quiet")
    assert r.exit_code == 2 and "'epochs' must be int" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_errors_found_later_say_which_options_the_config_file_set(data, tmp_path):
    """A value from --config that the data or the machine refuses (after the file itself was read fine) is named
    as the flag and as coming from the file; a flag given on the command line is not blamed on the file."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {data}\nlabel: label\ncategorical: a\nmulti-hot: 'a:|'\n")
    r = cli("run", "--config", cfg, "--out", tmp_path / "r", *FAST)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "both --categorical and --multi-hot" in r.output
    assert f"(--categorical, --multi-hot from {cfg})" in r.output
    cfg.write_text(f"data:\n  data: {data}\n  label: label\n  numeric: [nosuch]\n")  # in a section
    r = cli("run", "--config", cfg, "--out", tmp_path / "r", *FAST)
    assert r.exit_code == 2 and "column 'nosuch' named by --numeric is absent" in r.output
    assert f"(--numeric from {cfg})" in r.output, r.output
    cfg.write_text(f"data: {data}\nlabel: clicked\n")
    r = cli("run", "--config", cfg, "--out", tmp_path / "r", *FAST)
    assert r.exit_code == 2 and f"--label 'clicked' is not one of its columns" in r.output
    assert f"(--label from {cfg})" in r.output, r.output
    cfg.write_text(f"data: {data}\nlabel: label\n")
    r = cli("run", "--config", cfg, "--numeric", "nosuch", "--out", tmp_path / "r", *FAST)
    assert r.exit_code == 2 and "named by --numeric is absent" in r.output and str(cfg) not in r.output, r.output
    assert not (tmp_path / "r").exists()


def test_select_flag_overrides_config(data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {data}\nlabel: label\nno_select: true\n")
    r = cli("train", "--config", cfg, "--select", "--out", tmp_path / "r", *FAST)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r" / "run.json").read_text())["state"] == "pretrained"


def test_one_class_split_writes_valid_json(tmp_path):
    df = make_frame(200)
    df["label"] = 0
    df.loc[:5, "label"] = 1  # positives only in the first rows: a time-ordered test split has none
    df["ts"] = np.arange(200)
    df.to_csv(tmp_path / "o.csv", index=False)
    r = cli("run", "--data", tmp_path / "o.csv", "--label", "label", "--time-column", "ts", "--no-select",
            "--out", tmp_path / "r", *FAST)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())  # strict JSON: no bare NaN
    assert m["test"]["auc"] is None and m["test"]["logloss"] is not None


def test_prune_after_the_data_changed(tmp_path):
    p = write_csv(tmp_path, n=400)
    r = cli("train", "--data", p, "--label", "label", "--out", tmp_path / "r", *FAST)
    assert r.exit_code == 0, r.output
    pd.read_csv(p).drop(columns=["b"]).to_csv(p, index=False)
    r = cli("prune", tmp_path / "r", "--quiet")
    assert r.exit_code == 2 and "data changed" in r.output


@pytest.mark.parametrize("args,name", [
    (["data", "synth", "--rows", "300", "--out", ""], "--out"),
    (["run", "--data", "DATA", "--label", "label", "--out", ""], "--out"),
    (["inspect", ""], "RUN"),
    (["export", "RUN", "--out", ""], "--out"),
    (["serve", ""], "EXPORT_DIR"),
])
def test_an_empty_path_is_refused_not_read_as_the_current_directory(data, pretrained, tmp_path, monkeypatch, args,
                                                                    name):
    monkeypatch.chdir(tmp_path)
    r = cli(*[str(data) if a == "DATA" else str(pretrained) if a == "RUN" else a for a in args])
    assert r.exit_code == 2 and r.output.strip() == f"error: {name} '': is empty; give a path", r.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--ignore", "a", "--ignore", "b"], "--ignore is given 2 times; give it once (a list is one flag: "
                                         "comma-separated values)"),
    (["--hidden", "8", "--hidden", "4"], "--hidden is given 2 times; give it once (a list is one flag: "),
])
def test_a_list_flag_given_twice_is_refused_not_the_last_list_kept(tmp_path, args, message):
    """Only the last list was kept, quietly (`--ignore a --ignore b` trained on a): refused in one line, before
    anything is read or written. (A scalar flag given again takes the later value.)"""
    one_line_error(cli("run", "--data", tmp_path / "absent.csv", "--label", "label", *args, "--out", tmp_path / "r"),
                   message)
    assert not (tmp_path / "r").exists()
    one_line_error(cli("bench", "--data", tmp_path / "absent.csv", "--label", "label", "--k", "1", "--seeds", "0",
                       "--seeds", "1"), "--seeds is given 2 times; give it once")  # bench's own lists too


def test_label_absent_is_one_message_with_or_without_a_schema(data, tmp_path):
    """A --label the file does not hold gets the same one-line error whether the schema is inferred or given by
    --schema (and streamed or not): the label check is written once."""
    r = cli("train", "--data", data, "--label", "label", "--out", tmp_path / "r", *FAST)
    assert r.exit_code == 0, r.output
    for extra in ([], ["--schema", tmp_path / "r" / "schema.json"], ["--stream", "--shard-dir", tmp_path / "sh"]):
        r = cli("train", "--data", data, "--label", "clicked", *extra, "--out", tmp_path / "bad", *FAST)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert "--label 'clicked' is not one of its columns" in r.output, (extra, r.output)
    assert not (tmp_path / "bad").exists()


def test_paths_the_system_cannot_take_are_one_line_errors(data, pretrained, tmp_path, monkeypatch):
    """A name longer than a file system takes, a loop of symbolic links, and a name whose bytes are not UTF-8 (from
    another locale) end in one line naming the path, exit 2, wherever a path is given; nothing is written."""
    long = str(tmp_path / ("x" * 300))
    (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
    monkeypatch.chdir(tmp_path)  # relative names are made absolute (resolved) first
    odd = str(tmp_path / "r\udce9sum\udce9")  # what Python makes of the bytes r\xe9sum\xe9 in an argument
    for args, shown in (
            (["train", "--data", long + ".csv", "--label", "label", "--out", tmp_path / "o"], "xxxxxxxx"),
            (["train", "--data", data, "--label", "label", "--schema", long + ".json", "--out", tmp_path / "o"],
             "xxxxxxxx"),
            (["train", "--data", data, "--label", "label", "--stream", "--shard-dir", long, "--out", tmp_path / "o"],
             "xxxxxxxx"),
            (["prune", long], "xxxxxxxx"), (["inspect", long], "xxxxxxxx"),
            (["export", long, "--out", tmp_path / "e"], "xxxxxxxx"),
            (["train", "--data", "loop.csv", "--label", "label", "--out", tmp_path / "o"], "a loop of symbolic links"),
            (["train", "--data", data, "--label", "label", "--schema", "loop.csv", "--out", tmp_path / "o"],
             "a loop of symbolic links"),
            (["run", "--data", data, "--label", "label", "--out", odd], "not UTF-8 text"),
            (["run", "--data", odd + ".csv", "--label", "label", "--out", tmp_path / "o"], "--data '"),
            (["run", "--data", data, "--label", "label", "--stream", "--shard-dir", odd, "--out", tmp_path / "o"],
             "--shard-dir '"),
            (["export", pretrained, "--out", odd], "not UTF-8 text"),
            (["inspect", pretrained, "--plot", odd + ".png"], "not UTF-8 text")):
        r = cli(*args, *(FAST if args[0] in ("train", "run") else []))
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, (args, r.output)
        assert shown in r.output and "Traceback" not in r.output, (args, r.output)
        assert "not UTF-8 text" in r.output or not any(odd in str(a) for a in args), (args, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop.csv"]


def test_a_url_or_host_that_is_not_text_is_one_line_error():
    from lightfmp.serve.load import Target
    from lightfmp.serve.server import bind
    with pytest.raises(LightFMPError, match="--url .*not UTF-8 text"):
        Target.parse("http://h\udce9:1")
    with pytest.raises(LightFMPError, match="--host .*not a host name"):
        bind("h\udce9", 0)


def test_a_missing_data_file_from_a_config_file_says_it_came_from_there(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {tmp_path / 'nosuch.csv'}\nlabel: label\n")
    line = one_line_error(cli("train", "--config", cfg, "--out", tmp_path / "r", *FAST), "nosuch.csv",
                          "file not found", f"(--data from {cfg})")
    assert not (tmp_path / "r").exists(), line


def test_a_model_worse_than_the_label_rate_is_said(data, tmp_path):
    """300 noise fields of 50 values each on 800 rows: the model memorises its rows and its validation logloss is
    worse than one probability (the training label rate) for every row; the run says so. A model that learnt
    something (the module's data) does not."""
    rng = np.random.default_rng(0)
    n = 800
    x = rng.integers(0, 5, n)
    wide = pd.DataFrame({f"c{i}": rng.integers(0, 50, n).astype(str) for i in range(300)})
    wide["inf"], wide["label"] = x.astype(str), (rng.random(n) < 1 / (1 + np.exp(-1.5 * (x - 2)))).astype(int)
    wide.to_csv(tmp_path / "w.csv", index=False)
    warned = "has learnt less than nothing"
    r = cli("run", "--data", tmp_path / "w.csv", "--label", "label", "--no-select", "--epochs", "2", "--embed-dim",
            "4", "--hidden", "16", "--out", tmp_path / "w", "--quiet")
    assert r.exit_code == 0 and warned in r.output, r.output
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert m["valid"]["logloss"] > 0.6  # what the warning says: worse than the label rate's ~0.69
    r = cli("run", "--data", data, "--label", "label", "--out", tmp_path / "g", *FAST)
    assert r.exit_code == 0 and warned not in r.output, r.output
