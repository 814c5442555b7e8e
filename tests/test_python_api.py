"""The Python API's arguments: what the CLI's flags check, checked where a Python caller passes them, each a
one-line LightFMPError (None or a DataFrame where a path goes, 8.5 where a whole number goes) and nothing written."""
import asyncio

import numpy as np
import pandas as pd
import pytest

import lightfmp
from helpers import write_csv
from lightfmp import LightFMPError, RunConfig
from lightfmp.export import export_run
from lightfmp.serving import Predictor


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    t = tmp_path_factory.mktemp("api")
    cfg = RunConfig.of(data=str(write_csv(t, n=600)), label="label", epochs=1, pretrain_epochs=1, embed_dim=4,
                       hidden=[8])
    lightfmp.run(cfg, t / "run", quiet=True)
    export_run(t / "run", t / "exp")
    return t, cfg


@pytest.mark.parametrize("call, says", [
    (lambda t, cfg: lightfmp.train(cfg, None), "the output directory must be a path .*, got None"),
    (lambda t, cfg: lightfmp.run(cfg, 123), "the output directory must be a path .*, got a value of type int"),
    (lambda t, cfg: lightfmp.prune(None), "the run directory must be a path"),
    (lambda t, cfg: lightfmp.open_run(None), "the run directory must be a path"),
    (lambda t, cfg: Predictor(None), "the export must be a path"),
    (lambda t, cfg: lightfmp.run(cfg.but(embed_dim=10**9), t / "x"), r"--embed-dim 1000000000 over \d+ table rows: "
                                                                      r".* GiB to train"),
    (lambda t, cfg: Predictor(pd.DataFrame({"a": [1]})), "the export must be a path .*DataFrame"),
    (lambda t, cfg: lightfmp.train({"data": "d.csv"}, t / "x"), "the config must be a RunConfig .*dict"),
    (lambda t, cfg: lightfmp.run(None, t / "x"), "the config must be a RunConfig .*got None"),
    (lambda t, cfg: export_run(t / "run", None), "the export directory must be a path"),
    (lambda t, cfg: export_run(None, t / "x"), "the run directory must be a path"),
    (lambda t, cfg: export_run(t / "run", t / "x", opset="17"), "--opset '17': must be a whole number"),
    (lambda t, cfg: export_run(t / "run", t / "x", max_batch_size=8.5), "--max-batch-size 8.5: must be a whole"),
    (lambda t, cfg: export_run(t / "run", t / "x", max_batch_size=True), "--max-batch-size True: must be a whole"),
    (lambda t, cfg: export_run(t / "run", t / "x", triton_name=5), "--triton-name 5: must be text"),
    (lambda t, cfg: export_run(t / "run", t / "x", validate_rows=0), "validate_rows 0: must be >= 1"),
    (lambda t, cfg: lightfmp.train(cfg, t / "run", force="no"), "force 'no': must be True or False"),
    (lambda t, cfg: lightfmp.run(cfg, t / "run", force="no"), "force 'no': must be True or False"),
    (lambda t, cfg: lightfmp.run(cfg, t / "x", quiet="false"), "quiet 'false': must be True or False"),
    (lambda t, cfg: lightfmp.prune(t / "run", quiet="false"), "quiet 'false': must be True or False"),
    (lambda t, cfg: lightfmp.prune(t / "run", default_rule=1), "default_rule 1: must be True or False"),
    (lambda t, cfg: export_run(t / "run", t / "exp", force="no"), "force 'no': must be True or False"),
    (lambda t, cfg: RunConfig.of(str(t / "d.csv"), label="label"), r"RunConfig.of\(.*d.csv'\): takes keywords only"),
    (lambda t, cfg: Predictor(t / "exp", threads="2"), "threads '2': must be a whole number from 0 to 1024"),
    (lambda t, cfg: Predictor(t / "exp", threads=-1), "threads -1: must be a whole number from 0 to 1024"),
    (lambda t, cfg: Predictor(t / "exp", providers="CPUExecutionProvider"), "providers 'CPUExecutionProvider': must "
                                                                             "be a list"),
    # ONNX Runtime fell back to the CPU after a banner, and the caller never knew
    (lambda t, cfg: Predictor(t / "exp", providers=["Bogus"]), "providers: 'Bogus' is not a provider this ONNX "
                                                              "Runtime has \\(it has .*CPUExecutionProvider"),
])
def test_a_bad_argument_from_python_is_one_line(done, call, says):
    t, cfg = done
    before = {p: p.stat().st_mtime_ns for p in (t / "run").rglob("*")} | \
        {p: p.stat().st_mtime_ns for p in (t / "exp").rglob("*")}
    with pytest.raises(LightFMPError, match=says):
        call(t, cfg)
    assert not (t / "x").exists()
    after = {p: p.stat().st_mtime_ns for p in (t / "run").rglob("*")} | \
        {p: p.stat().st_mtime_ns for p in (t / "exp").rglob("*")}
    assert after == before  # a truthy 'no' for force replaced the run before


def test_an_exports_integers_may_be_numpy_integers(done, tmp_path):
    t, _ = done
    doc = export_run(t / "run", tmp_path / "e", opset=np.int64(17), max_batch_size=np.int32(64),
                     validate_rows=np.int64(50))
    assert doc["validation"]["rows"] == 50 and doc["validation"]["all_test_rows"] is False
    assert "max_batch_size: 64" in next((tmp_path / "e").rglob("config.pbtxt")).read_text()


@pytest.mark.parametrize("kw, says", [({"max_batch": 0}, "max_batch 0: must be >= 1"),
                                      ({"max_batch": 2.5}, "max_batch 2.5: must be a whole number"),
                                      ({"wait_ms": -1}, "wait_ms -1: must be >= 0"),
                                      ({"wait_ms": float("nan")}, "wait_ms nan: must be a finite number"),
                                      ({"workers": 0}, "workers 0: must be >= 1")])
def test_a_served_models_batching_is_checked(done, kw, says):
    from lightfmp.serve import ServedModel
    t, _ = done
    with pytest.raises(LightFMPError, match=says):
        ServedModel(t / "exp", **kw)


def test_a_served_model_scores_once_started(done):
    from lightfmp.serve import ServedModel
    t, _ = done
    m = ServedModel(t / "exp")
    feeds = m.predictor.encode(pd.read_csv(t / "data.csv").drop(columns="label").head(3))
    with pytest.raises(LightFMPError, match="call `await start\\(\\)` first"):
        asyncio.run(m.score(feeds, 3))

    async def started():
        await m.start()
        try:
            return await m.score(feeds, 3)
        finally:
            await m.stop()
    assert np.abs(asyncio.run(started()) - m.predictor.run(feeds)).max() <= 1e-6


def test_a_predictor_pickles_and_copies_by_loading_its_export_again(done, monkeypatch):
    """To a worker process (multiprocessing, joblib, Spark) a Predictor goes by its export's path (absolute: the
    worker's working directory may be another) and options."""
    import copy
    import pickle
    t, _ = done
    monkeypatch.chdir(t)
    p = Predictor("exp", threads=1)
    records = pd.read_csv(t / "data.csv").drop(columns="label").head(20)
    pickle.dumps(p)  # serialises (an ONNX Runtime session would not); lightfmp never loads a pickle itself
    monkeypatch.chdir(t.parent)
    rebuild, args = p.__reduce__()  # what a worker's unpickler calls, without loading one here
    for other in (rebuild(*args), copy.deepcopy(p)):
        assert other is not p and np.array_equal(other.predict(records), p.predict(records))


def test_loading_a_run_leaves_the_callers_random_generator_as_it_was(done):
    """Building the model to load weights into draws initial weights: the caller's torch generator is kept, as a
    run, train or prune keeps it (a notebook that seeds, loads and samples reproduces)."""
    import torch
    t, _ = done
    r = lightfmp.open_run(t / "run")
    torch.manual_seed(0)
    want = torch.rand(3)
    for load in (r.load_final, r.load_pretrained, lambda: export_run(t / "run", t / "again", force=True)):
        torch.manual_seed(0)
        load()
        assert torch.equal(torch.rand(3), want)


def test_a_run_whose_weights_went_after_it_was_opened_says_missing(done, tmp_path):
    import shutil
    t, _ = done
    shutil.copytree(t / "run", tmp_path / "run")
    r = lightfmp.open_run(tmp_path / "run")
    (tmp_path / "run" / "model.safetensors").unlink()
    with pytest.raises(LightFMPError, match=r"model\.safetensors: missing"):
        r.load_final()


def test_records_with_levels_of_column_names_are_refused(done):
    """A MultiIndex frame: 'a' in its columns matches a first level and reads a frame (one row scored as if every
    value were unknown, before): refused in one line."""
    t, _ = done
    df = pd.read_csv(t / "data.csv").head(3)
    df.columns = pd.MultiIndex.from_tuples([(c, "x") for c in df.columns])
    for rows in (df, df.head(1)):
        with pytest.raises(LightFMPError, match="2 levels of column names; give one"):
            Predictor(t / "exp").predict(rows)


def test_a_boolean_from_python_is_not_called_a_yaml_boolean():
    with pytest.raises(LightFMPError, match="'positive' must be text, got the boolean True$"):
        RunConfig.of(data="d.csv", label="y", positive=True)


def test_a_config_edited_after_it_was_built_is_checked_again(done, tmp_path):
    """Its sections are plain objects: an edit skipped every check (batch_size 0 ended in a ZeroDivisionError)."""
    t, cfg = done
    for key, value, says in (("batch_size", 0, "--batch-size 0: must be >= 1"),
                             ("lr", "fast", "'lr' must be a finite number, got 'fast'")):
        edited = cfg.but()
        setattr(edited.train, key, value)
        for call in (lightfmp.run, lightfmp.train):
            with pytest.raises(LightFMPError, match=says):
                call(edited, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    with pytest.raises(LightFMPError, match="data: the config's data as a lightfmp Dataset .*DataFrame"):
        lightfmp.run(cfg, tmp_path / "r", data=pd.DataFrame({"a": [1]}))
    assert not (tmp_path / "r").exists()


def test_a_whole_number_option_takes_no_fraction_of_any_type():
    from decimal import Decimal
    from fractions import Fraction
    for v in (Decimal("2.5"), Fraction(5, 2), 2.5, float("inf")):
        with pytest.raises(LightFMPError, match="'epochs' must be int"):
            RunConfig.of(epochs=v)
    assert RunConfig.of(epochs=Decimal("3")).train.epochs == 3 and RunConfig.of(epochs=np.int64(4)).train.epochs == 4
    for d in ([1, 2], "lr: 1"):
        with pytest.raises(LightFMPError, match="must be a mapping of option: value"):
            RunConfig.from_dict(d)


def test_a_run_object_reads_what_the_run_wrote_and_says_when_it_was_rewritten(done, tmp_path):
    """metrics() checks the recorded sha256 as history() does (an edited test AUC was returned); after a prune
    rewrote the run, an object opened before it says so instead of calling the new files edits."""
    import json
    import shutil
    t, _ = done
    shutil.copytree(t / "run", tmp_path / "run")
    r = lightfmp.open_run(tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    m["test"]["auc"] = 0.99
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(LightFMPError, match=r"metrics\.json: changed since the run wrote it"):
        r.metrics()
    shutil.rmtree(tmp_path / "run")
    shutil.copytree(t / "run", tmp_path / "run")
    r = lightfmp.open_run(tmp_path / "run")
    lightfmp.prune(tmp_path / "run", continue_epochs=1, quiet=True)
    for read in (r.metrics, r.history, r.load_final):
        with pytest.raises(LightFMPError, match=r"rewritten since it was opened \(by prune\?\); open the run again"):
            read()
    assert lightfmp.open_run(tmp_path / "run").metrics()["fields"]["kept"]  # opened again: read as it is now
