"""Data-parallel training under torchrun (2 CPU processes, gloo), per-epoch checkpoints and resume."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from lightfmp.checkpoint import Checkpoint
from lightfmp.datasets import synthesize
from lightfmp.models import ModelConfig, build_model
from lightfmp.rows import ArrayRows
from lightfmp.training import TrainConfig, fit

ARGS = ["--label", "label", "--epochs", "3", "--pretrain-epochs", "2"]  # phase 3: a first epoch, then two


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _scratch(tmp_path_factory):
    """torchrun's agent leaves a torchelastic_* folder in the temporary directory per launch: give the launches one
    of pytest's, not the machine's /tmp."""
    global SCRATCH
    SCRATCH = str(tmp_path_factory.mktemp("torchrun"))
    yield


SCRATCH: str | None = None


def lightfmp(*args, nproc: int | None = None, fault: str | None = None):
    """`python -m lightfmp ...`, or the same under torchrun with `nproc` processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    if SCRATCH is not None:
        env["TMPDIR"] = SCRATCH
    env.pop("LIGHTFMP_FAULT_RANK_EPOCH", None)
    if fault:
        env["LIGHTFMP_FAULT_RANK_EPOCH"] = fault
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                "--master-port", str(_free_port())] if nproc else [sys.executable]
    return subprocess.run(launcher + ["-m", "lightfmp", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def in_process(*args):
    """The same command in this process (cheaper than a new interpreter; no fault hook: it exits the process), at
    the one thread `lightfmp` gives its subprocesses: on some CPUs (an Intel Xeon VM) oneDNN's GEMMs round
    differently at 1 and 2 threads, so a run resumed here after a subprocess would otherwise mix the two."""
    from typer.testing import CliRunner

    from lightfmp.cli.app import app
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    return r


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


def history(run):
    return json.loads((run / "history.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    synthesize(rows=4000, fields=6, informative=2, out_dir=d, seed=0)
    return d / "data.parquet"


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    in_process("run", "--data", data, "--out", out, *ARGS, "--quiet")
    return metrics(out)


def test_two_ranks_compute_what_one_process_does(data, single, tmp_path):
    out = tmp_path / "run"
    r = lightfmp("run", "--data", data, "--out", out, *ARGS, nproc=2)
    assert r.returncode == 0, r.stderr
    m = metrics(out)
    assert m["fields"]["kept"] == single["fields"]["kept"]
    assert abs(m["test"]["auc"] - single["test"]["auc"]) <= 0.002
    assert m["phases"]["continue"]["rows"] == single["phases"]["continue"]["rows"]
    # the rule's costs on the first epoch's batches: each rank measured its slice, the rule read both ranks' rows
    assert m["selection"]["search"]["epoch_rows"] == single["selection"]["search"]["epoch_rows"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # one run dir, checkpoints removed
    assert r.stdout.count("fields kept") == 1                       # only rank 0 prints


def test_a_dead_rank_fails_the_run_and_a_rerun_resumes(data, single, tmp_path):
    out = tmp_path / "run"
    r = lightfmp("run", "--data", data, "--out", out, *ARGS, "--quiet", nproc=2, fault="1:1")
    assert r.returncode != 0
    assert "lightfmp: rank 1: LIGHTFMP_FAULT_RANK_EPOCH=1:1" in r.stderr
    assert "rerun the same command to resume from epoch 1" in r.stderr, r.stderr[-3000:]
    assert (tmp_path / "run.ckpt" / "continue.safetensors").exists()
    r = lightfmp("run", "--data", data, "--out", out, *ARGS, "--quiet", nproc=2)
    assert r.returncode == 0, r.stderr
    h = history(out)["continue"]
    assert h["resumed_from_epoch"] == 1 and [e["epoch"] for e in h["epochs"]] == [1, 2]
    assert abs(metrics(out)["test"]["auc"] - single["test"]["auc"]) <= 0.002
    assert not (tmp_path / "run.ckpt").exists()


def test_one_process_resume_continues_exactly(data, single, tmp_path):
    out = tmp_path / "run"
    r = lightfmp("run", "--data", data, "--out", out, *ARGS, "--quiet", fault="0:1")
    assert r.returncode == 1 and "testing hook" in r.stderr
    assert json.loads((out / "run.json").read_text())["state"] == "pretrained"
    in_process("run", "--data", data, "--out", out, *ARGS, "--quiet")
    assert history(out)["continue"]["resumed_from_epoch"] == 1
    m = metrics(out)
    # every random stream is reseeded per epoch: the resumed run is the uninterrupted one
    assert m["test"] == single["test"] and m["fields"] == single["fields"]


# ---- in process: the gated phase (both optimizers, gate hold-out) resumes exactly ------------------------------
class Interrupted(Exception):
    pass


def _gated_fit(rows, valid, ckpt, stop_at=None):
    from lightfmp.schema import FeatureSchema, Field
    schema = FeatureSchema("y", [Field(f"f{i}", "categorical", vocab=[f"v{j}" for j in range(20)])
                                 for i in range(4)])
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)

    def hook(epoch):
        if epoch == stop_at:
            raise Interrupted

    cfg = TrainConfig(epochs=3, batch_size=64, gate_holdout=0.25)
    return model, fit(model, rows, valid, cfg, seed=3, select_best=False, checkpoint=ckpt, epoch_start=hook)


def test_fit_resumes_gated_phase_exactly_and_ignores_foreign_checkpoints(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 22, size=(600, 4)).astype(np.int32)
    y = (rng.random(600) < 1 / (1 + np.exp(-(ids[:, 0] - 12) / 3))).astype(np.float32)
    rows, valid = ArrayRows(ids[:500], y[:500]), ArrayRows(ids[500:], y[500:])
    ref, ref_hist = _gated_fit(rows, valid, None)
    logs = []
    ckpt = Checkpoint(tmp_path, "pretrain", {"config_sha256": "a"}, logs.append)
    with pytest.raises(Interrupted):
        _gated_fit(rows, valid, ckpt, stop_at=2)
    model, hist = _gated_fit(rows, valid, Checkpoint(tmp_path, "pretrain", {"config_sha256": "a"}, logs.append))
    assert hist["resumed_from_epoch"] == 2 and logs == []
    assert [e["train_logloss"] for e in hist["epochs"]] == [e["train_logloss"] for e in ref_hist["epochs"]]
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    _, hist = _gated_fit(rows, valid, Checkpoint(tmp_path, "pretrain", {"config_sha256": "b"}, logs.append))
    assert "resumed_from_epoch" not in hist and "different config_sha256" in logs[0]


# ---- the pieces ---------------------------------------------------------------------------------------------------
def test_batches_cross_chunk_boundaries():
    from lightfmp.training import _batches
    chunks = [(np.arange(n)[:, None] + s, np.zeros(n, np.float32)) for s, n in ((0, 5), (5, 2), (7, 9), (16, 1))]
    got = [ids[:, 0].tolist() for ids, _ in _batches(iter(chunks), 4)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16]]  # ceil(17 / 4) batches


def test_dataset_offers_the_rows_accessors(tmp_path):
    from helpers import write_csv

    from lightfmp.config import RunConfig
    from lightfmp.pipeline import load_data
    data = load_data(RunConfig.of(data=str(write_csv(tmp_path, n=200)), label="label", multi_hot="tags:|"))
    sizes = data.split_sizes()
    assert sum(sizes.values()) == 200 and sizes["test"] == len(data.split_rows("test").labels())
    train = data.split_rows("train")
    assert len(train) == sizes["train"] and train.num_slots == train.arrays()[0].shape[1] == data.schema.num_slots
    assert sorted(train.row_numbers().tolist() + data.split_rows("test").row_numbers().tolist()
                  + data.split_rows("valid").row_numbers().tolist()) == list(range(200))  # positions in the file
    sub, rest = data.subset(0.25, 0)
    assert len(sub) + len(rest) == sizes["train"] and not set(sub.row_numbers()) & set(rest.row_numbers())
    assert len(data.subset(1.0, 0)[1]) == 0


def test_a_rank_that_does_not_write_the_checkpoints_knows_the_epoch_rank_0_saved(tmp_path, monkeypatch):
    """Only rank 0 saves; the others' stop line said the phase had no completed epoch, while rank 0's said where
    to resume. Played here by one process that is not rank 0 (its barriers are no-ops)."""
    from lightfmp import checkpoint as ckpt_mod, training
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 22, size=(600, 4)).astype(np.int32)
    y = (rng.random(600) < 1 / (1 + np.exp(-(ids[:, 0] - 12) / 3))).astype(np.float32)
    rows, valid = ArrayRows(ids[:500], y[:500]), ArrayRows(ids[500:], y[500:])
    monkeypatch.setattr(training.dist, "is_main", lambda: False)
    ckpt_mod.reset_hint()
    try:
        with pytest.raises(Interrupted):
            _gated_fit(rows, valid, Checkpoint(tmp_path, "pretrain", {"config_sha256": "a"}), stop_at=2)
        assert not list(tmp_path.iterdir())  # it wrote nothing
        assert ckpt_mod.resume_hint().startswith("rerun the same command to resume from epoch 2 (pretrain phase")
    finally:
        ckpt_mod.reset_hint()


def test_a_rank_that_does_not_write_says_what_rank_0_published(tmp_path, monkeypatch):
    """Rank 0 removes the checkpoints and publishes the run; a rank that did not write them kept the epoch it was
    told, and its stop line (while rank 0 published, or after) said to resume from a checkpoint that was gone, where
    rank 0's said what was there. Played here by one process that is not rank 0 (its barriers are no-ops), after a
    rank-0 `train` made the run directory `prune` reads."""
    from lightfmp import checkpoint as ckpt_mod, distributed, pipeline
    from lightfmp.config import RunConfig
    rng = np.random.default_rng(0)
    lines = ["a,b,y"] + [f"{a},{b},{int(rng.random() < (0.8 if a < 3 else 0.2))}"
                         for a, b in zip(rng.integers(0, 6, 400), rng.integers(0, 4, 400))]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    cfg = RunConfig.of(data=str(tmp_path / "d.csv"), label="y", epochs=2, pretrain_epochs=2, embed_dim=4,
                       hidden=[8])
    pipeline.train(cfg, tmp_path / "r", quiet=True)  # as rank 0: the run directory prune reads
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    try:
        for call, out in ((lambda: pipeline.train(cfg, tmp_path / "r2", quiet=True), tmp_path / "r2"),
                          (lambda: pipeline.prune(tmp_path / "r", keep=1, quiet=True), tmp_path / "r")):
            ckpt_mod.reset_hint()
            call()
            assert not (tmp_path / "r2").exists()  # it wrote nothing
            assert ckpt_mod.resume_hint() == f"{out} was written in full before that; nothing to rerun"
    finally:
        ckpt_mod.reset_hint()


def test_sparse_embeddings_are_refused_under_torchrun(tmp_path, monkeypatch):
    """DDP reduces dense gradients only: the tables' sparse ones failed inside every rank's backward with a traceback.
    Refused in one line before anything starts (WORLD_SIZE alone says torchrun launched the process)."""
    from lightfmp import pipeline
    from lightfmp.config import RunConfig
    from lightfmp.errors import LightFMPError
    (tmp_path / "d.csv").write_text("a,y\n1,0\n2,1\n" * 20)
    cfg = RunConfig.of(data=str(tmp_path / "d.csv"), label="y", sparse_embeddings=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for call in (pipeline.run, pipeline.train):
        with pytest.raises(LightFMPError, match=r"^--sparse-embeddings under torchrun: .*in one process$"):
            call(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.ckpt").exists()


def test_a_malformed_fault_hook_is_refused_before_any_work(tmp_path, monkeypatch):
    """It was read at phase 3's first epoch only: phase 1 trained and was written first."""
    from lightfmp import pipeline
    from lightfmp.config import RunConfig
    from lightfmp.errors import LightFMPError
    (tmp_path / "d.csv").write_text("a,y\n1,0\n2,1\n" * 20)
    monkeypatch.setenv("LIGHTFMP_FAULT_RANK_EPOCH", "0:x")
    for no_select in (False, True):
        cfg = RunConfig.of(data=str(tmp_path / "d.csv"), label="y", no_select=no_select)
        with pytest.raises(LightFMPError, match=r"^\$LIGHTFMP_FAULT_RANK_EPOCH='0:x': expected RANK:EPOCH"):
            pipeline.run(cfg, tmp_path / "r")
        assert not (tmp_path / "r").exists() and not (tmp_path / "r.ckpt").exists()


def test_prune_under_torchrun_with_a_held_lock_and_a_malformed_hook_says_so(data, tmp_path):
    """prune took the lock before the ranks had joined: rank 1 hung until torchrun killed it. And a malformed testing
    hook is named as itself, not as the run's config.yaml."""
    from lightfmp.writer_lock import one_writer
    out = tmp_path / "pre"
    r = lightfmp("train", "--data", data, "--out", out, *ARGS, "--quiet")
    assert r.returncode == 0, r.stderr
    with one_writer(out, "prune"):
        r = lightfmp("prune", out, "--keep", "2", "--quiet", nproc=2)
    assert r.returncode != 0
    assert "rank 0 could not take it for this prune (its line says why)" in r.stderr, r.stderr[-3000:]
    r = lightfmp("prune", out, "--keep", "2", "--quiet", fault="0:x")
    assert r.returncode == 2 and r.stderr.strip() == "error: $LIGHTFMP_FAULT_RANK_EPOCH='0:x': expected RANK:EPOCH, " \
                                                     "e.g. 1:1", r.stderr


def test_under_torchrun_a_held_lock_is_said_by_every_rank_not_as_a_lost_connection(data, tmp_path):
    """Rank 0 holds <out>'s lock for the job: refused, it tells the others, which say so instead of reporting a lost
    connection and advising a rerun while the other command still writes."""
    from lightfmp.writer_lock import one_writer
    out = tmp_path / "run"
    with one_writer(out, "run"):  # another command writing <out>
        r = lightfmp("run", "--data", data, "--out", out, *ARGS, "--quiet", nproc=2)
    assert r.returncode != 0
    assert "rank 0 could not take it for this run (its line says why)" in r.stderr, r.stderr[-3000:]
    assert "another lightfmp command is writing it" in r.stderr  # rank 0's line (torchrun then prints its own)
    assert "lost contact" not in r.stderr
