"""`lightfmp export`: files, graph contract, numerical agreement with PyTorch, options and refusals.

The runs and exports are built once per session (`shared()`), and test_serving / test_profile reuse them."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from helpers import rewrite_metrics
from lightfmp import export as ex
from lightfmp import pipeline
from lightfmp.cli.app import app
from lightfmp.config import RunConfig
from lightfmp.errors import LightFMPError
from lightfmp.export import contract, graph
from lightfmp.export.exporter import triton_model_name
from lightfmp.export.validate import AUC_TOLERANCE, run_test_frame, tie_slack
from lightfmp.metrics import roc_auc
from lightfmp.profiling import Budget, profile
from lightfmp.rundir import open_run
from lightfmp.serving import Predictor

runner = CliRunner()
_SHARED: dict = {}


def make_csv(path: Path, n: int = 800, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    city = rng.choice(["paris", "rome", "oslo", "lima", "kyiv", "cork"], n)
    dev = rng.integers(0, 12, n)
    price = np.round(rng.normal(5, 2, n), 3)
    tags = ["|".join(rng.choice(list("abcdef"), rng.integers(0, 4), replace=False)) for _ in range(n)]
    noise = rng.integers(0, 5, n)
    logit = 1.5 * (city == "paris") + 0.5 * (price - 5) + np.array(["a" in t for t in tags]) - 1
    df = pd.DataFrame({"city": city, "dev": dev, "price": price, "tags": tags, "noise": noise,
                       "label": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)})
    df.loc[::13, "price"] = np.nan
    df.to_csv(path, index=False)
    return path


def _cfg(data, **kw) -> RunConfig:
    base = dict(data=str(data), label="label", multi_hot="tags:|", pretrain_epochs=2, epochs=1, embed_dim=4,
                hidden="16", batch_size=128, subset=0.5, device="cpu")
    base.update(kw)
    return RunConfig.of(**base)


def shared(tmp_path_factory) -> dict:
    """Runs: pretrained-only, pruned deepfm (--keep 2 through the CLI), full mlp / dcnv2 / widedeep; and exports."""
    if _SHARED:
        return _SHARED
    root = tmp_path_factory.mktemp("export")
    data = make_csv(root / "data.csv")
    pipeline.train(_cfg(data), root / "pre", quiet=True)
    shutil.copytree(root / "pre", root / "pruned")
    res = runner.invoke(app, ["prune", str(root / "pruned"), "--keep", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    runs = {"deepfm": root / "pruned"}
    for bb in ("mlp", "dcnv2", "widedeep"):
        pipeline.run(_cfg(data, backbone=bb, no_select=True), root / f"full_{bb}", quiet=True)
        runs[bb] = root / f"full_{bb}"
    _SHARED.update(root=root, data=data, pre=root / "pre", runs=runs, exports={})
    return _SHARED


def get_export(s: dict, backbone: str = "deepfm", **kw) -> Path:
    key = (backbone, tuple(sorted(kw.items())))
    if key not in s["exports"]:
        out = s["root"] / f"exp_{backbone}_{len(s['exports'])}"
        ex.export_run(s["runs"][backbone], out, **kw)
        s["exports"][key] = out
    return s["exports"][key]


def held_out_rows(run_dir: Path) -> pd.DataFrame:
    """Every test row of the run, raw columns."""
    return run_test_frame(open_run(run_dir), 10 ** 9).frame


def torch_probs(run_dir: Path, df: pd.DataFrame) -> np.ndarray:
    model, kept = open_run(run_dir).load_final()
    with torch.no_grad():
        return torch.sigmoid(model.eval()(torch.from_numpy(kept.encode(df).astype(np.int64)))).numpy()


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    return shared(tmp_path_factory)


def _sess(d: Path):
    return ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])


# ---- CLI end to end ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "ctr v2", "", "ctr/1", "a" * 256])
def test_a_triton_name_it_would_have_to_change_is_refused_before_any_work(s, name):
    out = s["root"] / "bad_name"
    res = runner.invoke(app, ["export", str(s["runs"]["deepfm"]), "--out", str(out), "--triton-name", name])
    shown = repr(name) if len(name) <= 60 else repr(name[:57]) + "... (256 characters)"
    assert res.exit_code == 2 and f"--triton-name {shown}" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("size", ["0", str(2**31)])
def test_a_max_batch_size_triton_cannot_read_is_refused(s, size):
    out = s["root"] / "bad_batch"
    res = runner.invoke(app, ["export", str(s["runs"]["deepfm"]), "--out", str(out), "--max-batch-size", size])
    assert res.exit_code == 2 and f"--max-batch-size {size}: must be 1..2147483647" in res.output
    assert not out.exists()


def test_a_directory_name_becomes_a_triton_name():
    assert triton_model_name("../x") == "x" and triton_model_name("my export") == "my_export"


def test_cli_export_end_to_end(s):
    out = s["root"] / "cli_export"
    res = runner.invoke(app, ["export", str(s["runs"]["deepfm"]), "--out", str(out), "--triton-name", "_ctr-v2_"])
    assert res.exit_code == 0, res.output
    kept = open_run(s["runs"]["deepfm"]).metrics()["fields"]
    doc = json.loads((out / "feature_schema.json").read_text())
    for key in ("schema_version", "model_file", "model_sha256", "label", "output", "inputs", "dropped_fields"):
        assert key in doc
    assert doc["output"]["name"] == "probability" and doc["label"] == "label"
    assert [i["name"] for i in doc["inputs"]] == kept["kept"] and len(kept["kept"]) == 2
    assert doc["dropped_fields"] == kept["dropped"]
    assert doc["model_sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    for spec in doc["inputs"]:
        assert spec["oov_id"] == 1 and spec["padding_id"] == 0
        if spec["kind"] == "numeric":
            assert spec["dtype"] == "float32" and spec["transform"]["type"] == "bucketize"
        else:
            vocab = json.loads((out / spec["vocab_file"]).read_text())
            assert min(vocab.values()) == 2 and sorted(vocab.values()) == list(range(2, 2 + len(vocab)))
            assert spec["dtype"] == "int64"
    # metadata copy: everything but the hash of the file that holds it and the validation report
    proto = onnx.load(str(out / "model.onnx"))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["lightfmp.feature_schema"])
    assert meta == {k: v for k, v in doc.items() if k not in ("model_sha256", "validation")}
    # Triton entry
    cfg = (out / "triton" / "_ctr-v2_" / "config.pbtxt").read_text()  # the name given, kept whole
    assert 'platform: "onnxruntime_onnx"' in cfg and "max_batch_size: 4096" in cfg and "dynamic_batching" in cfg
    assert cfg.count("name:") == 1 + len(kept["kept"]) + 1
    for name in kept["dropped"]:
        assert f'"{name}"' not in cfg
    assert (out / "triton" / "_ctr-v2_" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    v = doc["validation"]
    assert v["max_abs_diff_vs_torch"] <= 1e-5 and v["batch1_vs_batch_max_abs_diff"] <= 1e-5
    assert v["auc_onnx"] == pytest.approx(open_run(s["runs"]["deepfm"]).metrics()["test"]["auc"], abs=1e-6)


# ---- numerical agreement -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["deepfm", "mlp", "dcnv2", "widedeep"])
def test_every_backbone_matches_torch(s, backbone):
    out = get_export(s, backbone)
    df = held_out_rows(s["runs"][backbone])
    _, kept = open_run(s["runs"][backbone]).load_final()
    got = _sess(out).run(None, ex.feeds_from_frame(df, kept))[0]
    assert got.dtype == np.float32 and got.shape == (len(df),)
    assert np.abs(got - torch_probs(s["runs"][backbone], df)).max() <= 1e-5


def test_pruned_graph_inputs_are_exactly_the_kept_fields(s):
    out = get_export(s)
    m = open_run(s["runs"]["deepfm"]).metrics()
    assert m["fields"]["dropped"], "the run should have dropped fields"
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [i.name for i in graph.input] == m["fields"]["kept"]
    assert [o.name for o in graph.output] == ["probability"]
    for i in graph.input:
        assert i.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_no_select_run_exports_all_fields(s):
    out = get_export(s, "mlp")
    all_fields = open_run(s["runs"]["mlp"]).schema.names
    assert [i.name for i in _sess(out).get_inputs()] == all_fields
    kinds = {i.name: (i.type, i.shape) for i in _sess(out).get_inputs()}
    assert kinds["price"] == ("tensor(float)", ["batch"])
    assert kinds["city"] == ("tensor(int64)", ["batch"])
    assert kinds["tags"][0] == "tensor(int64)" and kinds["tags"][1][0] == "batch"


def test_oov_ids_are_clamped_in_graph(s):
    out = get_export(s, "mlp")
    doc = json.loads((out / "feature_schema.json").read_text())
    sess = _sess(out)
    base = ex.feeds_from_frame(held_out_rows(s["runs"]["mlp"]).head(4), open_run(s["runs"]["mlp"]).schema)
    for spec in doc["inputs"]:
        if spec["kind"] == "numeric":
            continue
        v = spec["vocab_size"]
        bad = np.array([v, v + 1000, -1, -(2 ** 40)], dtype=np.int64)
        oov = np.ones(4, dtype=np.int64)
        if spec["kind"] == "multi_hot":
            bad = np.repeat(bad[:, None], spec["shape"][1], 1)
            oov = np.ones_like(bad)
        a = sess.run(None, {**base, spec["name"]: bad})[0]
        b = sess.run(None, {**base, spec["name"]: oov})[0]
        np.testing.assert_array_equal(a, b)


def test_raw_input_mode_equals_id_mode(s):
    raw, ids = get_export(s, "mlp", inputs="raw"), get_export(s, "mlp")
    _, kept = open_run(s["runs"]["mlp"]).load_final()
    df = held_out_rows(s["runs"]["mlp"])
    df.loc[0, "city"] = "never-seen"
    df.loc[1, "tags"] = "a|zzz|b"
    sess = _sess(raw)
    types = {i.name: i.type for i in sess.get_inputs()}
    assert types["city"] == "tensor(string)" and types["tags"] == "tensor(string)" and types["price"] == "tensor(float)"
    a = sess.run(None, ex.feeds_from_frame(df, kept, raw=True))[0]
    b = _sess(ids).run(None, ex.feeds_from_frame(df, kept))[0]
    assert np.abs(a - b).max() <= 1e-6
    doc = json.loads((raw / "feature_schema.json").read_text())
    assert doc["input_mode"] == "raw" and "string" in (d["dtype"] for d in doc["inputs"])
    assert "TYPE_STRING" in next((raw / "triton").glob("*/config.pbtxt")).read_text()


def test_a_blank_category_is_the_oov_id_in_both_input_modes(s):
    """A blank categorical cell is missing, which training encodes as the OOV id (1): the raw-input graph reads it
    so too (scored as a value never seen), and a blank multi-hot cell holds no tag in either mode."""
    raw, ids = get_export(s, "mlp", inputs="raw"), get_export(s, "mlp")
    _, kept = open_run(s["runs"]["mlp"]).load_final()
    df = held_out_rows(s["runs"]["mlp"]).head(6).reset_index(drop=True)
    df["city"], df["tags"] = df["city"].astype(object), df["tags"].astype(object)
    df.loc[0, "city"], df.loc[1, "city"], df.loc[2, "tags"] = np.nan, None, np.nan
    unseen = df.copy()
    unseen.loc[[0, 1], "city"] = "never-seen"
    id_feeds = ex.feeds_from_frame(df, kept)
    assert list(id_feeds["city"][:2]) == [1, 1] and not id_feeds["tags"][2].any()
    a = _sess(raw).run(None, ex.feeds_from_frame(df, kept, raw=True))[0]
    b = _sess(ids).run(None, id_feeds)[0]
    c = _sess(raw).run(None, ex.feeds_from_frame(unseen, kept, raw=True))[0]
    assert np.abs(a - b).max() <= 1e-6 and np.abs(a[:2] - c[:2]).max() <= 1e-6
    np.testing.assert_allclose(b, torch_probs(s["runs"]["mlp"], df), atol=1e-6)


def test_validating_on_exactly_the_test_rows_still_compares_the_runs_test_auc(s, tmp_path):
    """validate_rows equal to the number of test rows reads every one of them, so the export's test AUC is compared
    with the run's; one row fewer is a sample of them, where it cannot be."""
    n = len(held_out_rows(s["runs"]["mlp"]))
    every = ex.export_run(s["runs"]["mlp"], tmp_path / "every", validate_rows=n)["validation"]
    assert every["rows"] == n and every["all_test_rows"] is True and "auc_diff_vs_run" in every
    fewer = ex.export_run(s["runs"]["mlp"], tmp_path / "fewer", validate_rows=n - 1)["validation"]
    assert fewer["rows"] == n - 1 and fewer["all_test_rows"] is False and "auc_diff_vs_run" not in fewer


@pytest.mark.parametrize("shift", [5e-6, 1e-4])
def test_onnx_runtime_must_agree_with_pytorch_to_1e_5(s, tmp_path, monkeypatch, shift):
    """The export's first check: ONNX Runtime's probabilities within 1e-5 of PyTorch's on the test rows; a graph
    1e-4 off is refused in one line and nothing is written."""
    from lightfmp.export import validate as val
    real = val._torch_scores
    monkeypatch.setattr(val, "_torch_scores", lambda *a: real(*a) + shift)
    if shift < 1e-5:
        assert ex.export_run(s["runs"]["mlp"], tmp_path / "out")["validation"]["max_abs_diff_vs_torch"] < 1e-5
        return
    with pytest.raises(LightFMPError, match=r"ONNX Runtime and PyTorch disagree on test split rows: max \|diff\| "
                                            r"0\.0001 > 1e-05") as e:
        ex.export_run(s["runs"]["mlp"], tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_fp16_tables_close(s):
    fp16, fp32 = get_export(s, "mlp", dtype="fp16"), get_export(s, "mlp")
    proto = onnx.load(str(fp16 / "model.onnx"))
    dtypes = {t.name: t.data_type for t in proto.graph.initializer}
    assert dtypes["model.embedding.weight"] == onnx.TensorProto.FLOAT16
    assert (fp16 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size
    _, kept = open_run(s["runs"]["mlp"]).load_final()
    feeds = ex.feeds_from_frame(held_out_rows(s["runs"]["mlp"]), kept)
    a, b = _sess(fp16).run(None, feeds)[0], _sess(fp32).run(None, feeds)[0]
    assert np.abs(a - b).max() < 1e-3
    v = json.loads((fp16 / "feature_schema.json").read_text())["validation"]
    assert abs(v["fp16"]["auc_change"]) < 0.01 and v["max_abs_diff_vs_torch"] <= 1e-5


def test_external_data_over_threshold(s, monkeypatch):
    monkeypatch.setattr(graph, "EXTERNAL_DATA_THRESHOLD", 0)
    out = s["root"] / "ext"
    doc = ex.export_run(s["runs"]["mlp"], out)
    assert (out / "model.onnx.data").exists() and doc["external_data"]["file"] == "model.onnx.data"
    tri = next((out / "triton").glob("*/1"))
    assert (tri / "model.onnx.data").exists()
    assert _sess(out).get_inputs()[0].name == "city"
    # the external data (the weights) is held to its sha256 like the graph, in the export and in the Triton copy
    from lightfmp.errors import LightFMPError
    from lightfmp.serving import Predictor
    Predictor(out)
    for f in (out / "model.onnx.data", tri / "model.onnx.data"):
        good = f.read_bytes()
        f.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        with pytest.raises(LightFMPError, match=f"{f}: sha256 differs from feature_schema.json"):
            Predictor(out)
        f.write_bytes(good)
    (out / "model.onnx.data").unlink()
    with pytest.raises(LightFMPError, match=f"{out / 'model.onnx.data'}: missing from the export"):
        Predictor(out)


# ---- refusals ------------------------------------------------------------------------------------------------------
def test_export_of_unfinished_run_is_refused(s):
    out = s["root"] / "never"
    res = runner.invoke(app, ["export", str(s["pre"]), "--out", str(out)])
    assert res.exit_code == 2
    assert "error:" in res.stderr and "pretrained" in res.stderr and "Traceback" not in res.output
    assert not out.exists()


def test_existing_dir_without_force_is_left_alone(s):
    out = s["root"] / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["export", str(s["runs"]["mlp"]), "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    # --force replaces only what lightfmp wrote: a directory of the user's is refused, untouched
    res = runner.invoke(app, ["export", str(s["runs"]["mlp"]), "--out", str(out), "--force", "--quiet"])
    assert res.exit_code == 2 and "not a directory lightfmp wrote" in res.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    out.rmdir()
    res = runner.invoke(app, ["export", str(s["runs"]["mlp"]), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(s["runs"]["mlp"]), "--out", str(out), "--force", "--quiet"])
    assert res.exit_code == 0, res.output  # an export lightfmp wrote is replaced
    assert (out / "model.onnx").exists()


@pytest.mark.parametrize("args,msg", [(["--opset", "9"], "--opset 9"), (["--dtype", "int8"], "--dtype"),
                                      (["--inputs", "bytes"], "--inputs")])
def test_bad_options(s, args, msg):
    res = runner.invoke(app, ["export", str(s["runs"]["mlp"]), "--out", str(s["root"] / "bad"), *args])
    assert res.exit_code == 2 and msg in res.stderr


def test_not_a_run(tmp_path):
    with pytest.raises(LightFMPError, match="not a lightfmp run"):
        ex.export_run(tmp_path, tmp_path.parent / f"{tmp_path.name}_out")


def test_streamed_run_validates_on_its_own_test_rows(tmp_path):
    """A --stream run splits by row hash, not by the in-memory permutation: export must score the rows the run
    was tested on (the in-memory split would mix training rows into "test")."""
    data = make_csv(tmp_path / "data.csv", n=1200)
    run_dir = tmp_path / "run"
    m = pipeline.run(_cfg(data, stream=True, chunk_rows=250, shard_dir=str(tmp_path / "shards")), run_dir,
                     quiet=True)
    out = tmp_path / "exp"
    ex.export_run(run_dir, out)
    v = json.loads((out / "feature_schema.json").read_text())["validation"]
    assert v["auc_onnx"] == pytest.approx(m["test"]["auc"], abs=1e-6)
    assert v["rows"] == m["test"]["rows"]


# ---- the serving contract ------------------------------------------------------------------------------------------
def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _edited_copy(s, tmp_path, edit) -> Path:
    """A copy of the mlp export whose feature_schema.json went through `edit(doc)`."""
    d = tmp_path / "exp"
    shutil.copytree(get_export(s, "mlp"), d)
    doc = json.loads((d / "feature_schema.json").read_text())
    edit(doc)
    (d / "feature_schema.json").write_text(json.dumps(doc))
    return d


def test_contract_is_typed_and_records_every_file_hash(s, tmp_path):
    out = get_export(s, "mlp")
    doc = json.loads((out / "feature_schema.json").read_text())
    c = contract.load_contract(out)
    assert c.to_dict() == doc and c.names == [i["name"] for i in doc["inputs"]]
    assert all(isinstance(i, contract.InputSpec) for i in c.inputs)
    assert c.model_sha256 == _sha(out / "model.onnx") and c.input_mode == "ids" and c.output.name == "probability"
    kinds = {i.name: i for i in c.inputs}
    assert kinds["price"].transform.boundaries and kinds["price"].vocab_file is None
    tags = kinds["tags"]
    assert tags.separator == "|" and tags.width == tags.max_len == doc["inputs"][3]["max_len"]
    vocab_specs = [i for i in c.inputs if i.kind != "numeric"]
    assert len(vocab_specs) == 4
    for spec in vocab_specs:
        assert spec.vocab_sha256 == _sha(out / spec.vocab_file)
    contract.verify_files(out, c)
    contract.save_contract(c, tmp_path)
    assert json.loads((tmp_path / "feature_schema.json").read_text()) == doc
    # the field a spec describes encodes like the run's
    _, kept = open_run(s["runs"]["mlp"]).load_final()
    assert kinds["tags"].field(kept.field("tags").vocab) == kept.field("tags")


def test_missing_or_unreadable_feature_schema(tmp_path):
    with pytest.raises(LightFMPError, match="not a lightfmp export") as e:
        contract.load_contract(tmp_path)
    assert str(tmp_path) in str(e.value)
    (tmp_path / "feature_schema.json").write_text("{nope")
    with pytest.raises(LightFMPError, match="not valid JSON") as e:
        contract.load_contract(tmp_path)
    assert str(tmp_path / "feature_schema.json") in str(e.value) and "\n" not in str(e.value)


def _numeric(doc) -> dict:
    return next(i for i in doc["inputs"] if i["kind"] == "numeric")


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d["inputs"][0].update(kind="text"), "kind 'text'"),
    (lambda d: d["inputs"][0].pop("dtype"), "missing 'dtype'"),
    (lambda d: d["inputs"][0].update(dtype="float32"), "dtype 'float32' does not fit"),
    (lambda d: d["inputs"][0].update(vocab_size="7"), "vocab_size"),
    (lambda d: d["inputs"][0].pop("vocab_file"), "needs a vocab_file or a hash rule"),
    (lambda d: d["inputs"][3].update(shape=["batch"]), "shape"),
    (lambda d: _numeric(d)["transform"].pop("boundaries"), "transform.boundaries"),
    (lambda d: d.update(inputs="city"), "'inputs' must be a non-empty list"),
    (lambda d: d["inputs"].append(7), "expected an object"),
    (lambda d: d.pop("model_file"), "not a lightfmp feature schema"),
    (lambda d: d.update(schema_version=99), "newer than this lightfmp reads"),
    (lambda d: d.update(model_sha256="abc"), "not a sha256"),
    (lambda d: d.update(input_mode="raw"), "input_mode 'raw' does not match"),
    (lambda d: d.pop("output"), "'output' needs a 'name'"),
    (lambda d: d["inputs"][0].update(vocab_size=-5), "vocab_size -5 must be an integer >= 2"),
    (lambda d: _numeric(d)["transform"].update(boundaries=[3, 2, 1]), "boundaries must be in ascending order"),
    (lambda d: _numeric(d)["transform"].update(boundaries=[1, "x"]), "boundaries must be a list of finite numbers"),
    (lambda d: d["inputs"].append(dict(d["inputs"][0])), "is listed twice in 'inputs'"),
    (lambda d: d.update(triton_model=5), "triton_model 5 is not a model name"),
    (lambda d: d.update(triton_model="a/b c"), "triton_model 'a/b c' is not a model name"),
    # the constants of lightfmp's encoding, which a client reading the file would encode by
    (lambda d: d["inputs"][0].update(oov_id=3), "oov_id is 3 where lightfmp's encoding of this input gives 1"),
    (lambda d: d["inputs"][0].update(oov_id=True), "oov_id is True where"),  # True == 1 in Python, not in JSON readers
    (lambda d: _numeric(d)["transform"].update(first_id=3), "transform.first_id is 3 where"),
    (lambda d: _numeric(d)["transform"].update(missing_id=0), "transform.missing_id is 0 where"),
    (lambda d: next(i for i in d["inputs"] if i["kind"] == "multi_hot").update(pad_value=1), "pad_value is 1 where"),
    (lambda d: next(i for i in d["inputs"] if i["kind"] == "multi_hot").update(max_len=9), "max_len is 9 where"),
])
def test_malformed_feature_schema_is_one_error_naming_the_file(s, tmp_path, edit, msg):
    d = _edited_copy(s, tmp_path, edit)
    with pytest.raises(LightFMPError) as e:
        contract.load_contract(d)
    assert str(d / "feature_schema.json") in str(e.value) and msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d["inputs"][0].update(name="zzz"), "lists 'zzz', which the graph does not read and lacks"),
    (lambda d: d["inputs"].pop(1), "lacks '"),
    (lambda d: d["output"].update(name="score"), "output 'score' is not an output of model.onnx"),
    (lambda d: next(i for i in d["inputs"] if i["kind"] == "multi_hot").update(shape=["batch", 99], max_len=99),
     r"has shape \['batch', 99\], but model.onnx reads \['batch', 3\]"),
])
def test_a_contract_that_does_not_describe_the_graph_is_one_error(s, tmp_path, edit, msg):
    """feature_schema.json edited after the export (its sha256 covers the model and vocab files, not itself): the
    Predictor, serve's model and profile check it against the graph ONNX Runtime loads, and say which file is
    wrong, instead of an error from inside ONNX Runtime at the first request."""
    d = _edited_copy(s, tmp_path, edit)
    for load in (lambda: Predictor(d), lambda: profile([d], [1], budget=Budget(1, 1, 1, 0.01), eager=False)):
        with pytest.raises(LightFMPError, match=msg) as e:
            load()
        assert str(e.value).startswith(str(d / "feature_schema.json")) and "\n" not in str(e.value)


@pytest.mark.parametrize("where,value", [("vocab_file", "../outside.json"), ("vocab_file", "/etc/hostname"),
                                         ("vocab_file", "vocab/../../outside.json"), ("model_file", "../model.onnx"),
                                         ("model_file", "C:\\model.onnx"), ("external", "../model.onnx.data")])
def test_schema_paths_must_stay_inside_the_export(s, tmp_path, where, value):
    def edit(doc):
        if where == "vocab_file":
            doc["inputs"][0]["vocab_file"] = value
        elif where == "model_file":
            doc["model_file"] = value
        else:
            doc["external_data"] = {"file": value, "sha256": "0" * 64}
    d = _edited_copy(s, tmp_path, edit)
    with pytest.raises(LightFMPError, match="must be a relative path inside the export directory") as e:
        contract.load_contract(d)
    assert str(d / "feature_schema.json") in str(e.value) and repr(value) in str(e.value)


def test_symlink_out_of_the_export_is_refused(s, tmp_path):
    d = _edited_copy(s, tmp_path, lambda doc: None)
    vocab = d / contract.load_contract(d).inputs[0].vocab_file
    outside = tmp_path / "outside.json"
    shutil.copyfile(vocab, outside)  # same bytes: only the location is wrong
    vocab.unlink()
    vocab.symlink_to(outside)
    with pytest.raises(LightFMPError, match="resolves outside the export directory"):
        contract.verify_files(d, contract.load_contract(d))


# ---- validation against the run -----------------------------------------------------------------------------------
def test_run_test_frame_is_the_runs_test_split(s):
    run = open_run(s["runs"]["mlp"])
    m = run.metrics()
    held = run_test_frame(run, 10 ** 9)
    assert held.complete and len(held.frame) == len(held.labels) == m["test"]["rows"]
    assert np.array_equal(held.labels, held.frame["label"].astype(int).to_numpy())
    # the run's own test AUC, recomputed on these rows
    assert roc_auc(held.labels, torch_probs(s["runs"]["mlp"], held.frame)) == pytest.approx(m["test"]["auc"], abs=1e-6)
    first = run_test_frame(run, 7)
    assert not first.complete and first.frame.equals(held.frame.head(7))
    assert np.array_equal(first.labels, held.labels[:7])


def test_auc_far_from_the_runs_recorded_auc_fails_the_export(s, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(s["runs"]["mlp"], run)
    m = json.loads((run / "metrics.json").read_text())
    auc = m["test"]["auc"]
    m["test"]["auc"] = auc - 0.05
    rewrite_metrics(run, m)
    with pytest.raises(LightFMPError, match=r"differs from the run's recorded test AUC .*metrics.json test.auc") as e:
        ex.export_run(run, tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    m["test"]["auc"] = auc - AUC_TOLERANCE / 2  # within the tolerance: exported, and the comparison recorded
    rewrite_metrics(run, m)
    v = ex.export_run(run, tmp_path / "out")["validation"]
    assert v["auc_tolerance"] == AUC_TOLERANCE and v["auc_diff_vs_run"] == pytest.approx(AUC_TOLERANCE / 2, abs=1e-6)


def test_tie_slack_is_the_share_of_pairs_near_a_tie():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 60), rng.integers(0, 6, 60) / 8  # six score levels (exact in binary): many ties
    for delta in (0.0, 0.0625, 0.125, 0.25, 1.0):
        pos, neg = p[y == 1], p[y == 0]
        brute = sum(abs(a - b) <= delta for a in pos for b in neg) / (len(pos) * len(neg))
        assert tie_slack(y, p, delta) == pytest.approx(brute)
    assert tie_slack(y, np.full(60, 0.3), 0.0) == 1.0           # every pair tied: the AUC could be anything
    assert tie_slack(y, y * 1.0, 0.5) == 0.0                    # every pair apart by 1
    assert tie_slack(np.zeros(5), np.arange(5.0), 1.0) == 0.0   # one label only: no pairs


def test_a_correct_export_of_a_small_split_of_tied_scores_passes_where_its_ties_break_otherwise(tmp_path):
    """Two fields of 2 and 7 values: 14 distinct rows, so the ~60 test rows' scores tie in groups. The run scored them
    with its own batching; a runtime that breaks those ties by 1e-8 moves the AUC by a whole tied group's pairs."""
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, 600), rng.integers(0, 7, 600)
    y = (rng.random(600) < 1 / (1 + np.exp(-(a - 0.5 + 0.3 * (b - 3))))).astype(int)
    pd.DataFrame({"a": [f"a{v}" for v in a], "b": [f"b{v}" for v in b], "label": y}).to_csv(tmp_path / "t.csv",
                                                                                         index=False)
    pipeline.run(RunConfig.of(data=str(tmp_path / "t.csv"), label="label", no_select=True, epochs=2, embed_dim=4,
                              hidden="8", device="cpu"), tmp_path / "run", quiet=True)
    held = run_test_frame(open_run(tmp_path / "run"), 10 ** 9)
    probs = torch_probs(tmp_path / "run", held.frame).astype(np.float64)
    assert len(np.unique(probs)) <= 14 < len(probs)
    # the AUC with every tied (positive, negative) pair ordered for the positive: what the run could have recorded
    pos, neg = probs[held.labels == 1], probs[held.labels == 0]
    ties = (pos[:, None] == neg[None, :]).sum()
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    m["test"]["auc"] = roc_auc(held.labels, probs) + 0.5 * ties / (len(pos) * len(neg))
    assert m["test"]["auc"] - roc_auc(held.labels, probs) > AUC_TOLERANCE
    rewrite_metrics(tmp_path / "run", m)
    v = ex.export_run(tmp_path / "run", tmp_path / "out")["validation"]
    assert v["auc_tolerance"] == pytest.approx(ties / (len(pos) * len(neg)), abs=0.02) and v["auc_tolerance"] > 0.01


def test_a_wrong_encoding_cannot_widen_the_auc_tolerance(s, tmp_path, monkeypatch):
    """The tolerance near ties is taken from the runtime's numerics (ONNX Runtime vs PyTorch on the same inputs),
    not from the export's distance to the training-time scores, which a wrong encoding is what makes large."""
    from lightfmp.export import validate as val
    real = val.feeds_from_frame

    def shifted(frame, kept, raw=False):  # each city id one off: a vocabulary read out of order
        feeds = real(frame, kept, raw)
        if not raw:
            feeds["city"] = np.where(feeds["city"] >= 2, (feeds["city"] - 1) % 6 + 2, feeds["city"])
        return feeds
    monkeypatch.setattr(val, "feeds_from_frame", shifted)
    with pytest.raises(LightFMPError, match=r"differs from the run's recorded test AUC .* more than 0.001"):
        ex.export_run(s["runs"]["mlp"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit,msg", [
    (lambda m: m["test"].update(auc="high"), r"test.auc must be a number between 0 and 1 or null, not 'high'"),
    (lambda m: m["test"].update(auc=1.5), r"test.auc must be a number between 0 and 1 or null, not 1.5"),
    (lambda m: m["valid"].update(logloss=[1]), r"valid.logloss must be a number >= 0 or null, not \[1\]"),
    (lambda m: m.update(test=[]), r"'test' must be an object with auc and logloss, not list"),
    (lambda m: m.update(test=None), r"'test' must be an object with auc and logloss, not NoneType"),
    (lambda m: m["fields"].update(dropped="x"), r"'fields.dropped' must be a list of field names"),
    (lambda m: m["test"].update(auc=None), r"test.auc is null, but the run's test rows hold both labels"),
])
def test_a_hand_edited_metrics_file_fails_the_export_in_one_line(s, tmp_path, edit, msg):
    """The run's recorded scores are what the export checks its model against: a wrong type or range is one line
    naming metrics.json and the entry, and a null test AUC where the test rows hold both labels does not skip the
    check; nothing is written."""
    run = tmp_path / "run"
    shutil.copytree(s["runs"]["mlp"], run)
    m = json.loads((run / "metrics.json").read_text())
    edit(m)
    rewrite_metrics(run, m)
    with pytest.raises(LightFMPError, match=msg) as e:
        ex.export_run(run, tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    assert str(e.value).startswith(f"{run / 'metrics.json'}: ")


def test_a_raw_export_refuses_an_empty_string_category(tmp_path):
    """In Parquet '' is a value, not a missing one, and training keys it as a category; a raw-input export reads ''
    as missing: refused in one line naming the field (an ids export keeps them apart)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    c = rng.choice(["", "x", "y"], 600)
    pq.write_table(pa.table({"c": c, "label": (rng.random(600) < np.where(c == "", 0.8, 0.3)).astype(np.int64)}),
                   tmp_path / "d.parquet")
    pipeline.run(RunConfig.of(data=str(tmp_path / "d.parquet"), label="label", categorical="c", epochs=1,
                              embed_dim=4, hidden="8", device="cpu", no_select=True), tmp_path / "r", quiet=True)
    assert "" in open_run(tmp_path / "r").schema.fields[0].vocab
    with pytest.raises(LightFMPError, match="field 'c' has the empty string as a category") as e:
        ex.export_run(tmp_path / "r", tmp_path / "raw", inputs="raw")
    assert "\n" not in str(e.value) and not (tmp_path / "raw").exists()
    ex.export_run(tmp_path / "r", tmp_path / "ids")  # validated against the run's test AUC


@pytest.mark.parametrize("hashed", [None, "big:64"])
def test_ids_past_2_53_with_nulls_export_and_validate(tmp_path, hashed):
    """The export re-reads its test rows from the file: an int64 column with nulls stays exact (pandas' default
    float would round ids past 2**53 onto their neighbours and fail a correct export's AUC check)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    n = 3000
    base = rng.integers(0, 40, n)
    big = pa.array([None if i % 11 == 0 else 2 ** 60 + int(b) for i, b in enumerate(base)], type=pa.int64())
    pq.write_table(pa.table({"big": big, "g": rng.integers(0, 30, n).astype(str),
                             "label": (rng.random(n) < np.where(base % 2 == 0, 0.8, 0.2)).astype(np.int64)}),
                   tmp_path / "d.parquet")
    pipeline.run(RunConfig.of(data=str(tmp_path / "d.parquet"), label="label", categorical="big,g", epochs=2,
                              embed_dim=4, hidden="8", device="cpu", no_select=True, hash_buckets=hashed),
                 tmp_path / "r", quiet=True)
    doc = ex.export_run(tmp_path / "r", tmp_path / "e")
    assert doc["validation"]["auc_diff_vs_run"] == pytest.approx(0.0, abs=1e-6)


def test_changed_data_file_validates_on_sampled_rows(s, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(s["runs"]["mlp"], run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "data_sha256": "0" * 64}))
    v = ex.export_run(run, tmp_path / "out")["validation"]
    assert v["source"] == "sampled" and "data changed since" in v["note"]
    assert "auc_onnx" not in v and v["max_abs_diff_vs_torch"] <= 1e-5


def test_export_hashes_the_data_file_once(s, tmp_path, monkeypatch):
    """The export checks that the run's data file is the one it was trained on by one hash (the read of its test
    rows), not a second check of its own before it."""
    import sys
    import lightfmp.io
    calls = []
    real = lightfmp.io.file_sha256

    def counted(path, *a, **kw):
        calls.append(str(path))
        return real(path, *a, **kw)
    for module in [m for n, m in sys.modules.items() if n.startswith("lightfmp")]:  # wherever it was imported
        if getattr(module, "file_sha256", None) is real:
            monkeypatch.setattr(module, "file_sha256", counted)
    data = open_run(s["runs"]["mlp"]).config.data.data
    v = ex.export_run(s["runs"]["mlp"], tmp_path / "out")["validation"]
    assert v["source"] == "test split" and calls.count(str(data)) == 1, calls


def test_a_field_name_as_long_as_a_column_can_be_exports(tmp_path):
    """A 300-character column name trains; its vocabulary's file name is cut (with a hash) to what a file system
    takes, and the export validates and serves by the field's own name."""
    long = "c" * 300
    data = tmp_path / "long.csv"
    pd.read_csv(make_csv(tmp_path / "d.csv")).rename(columns={"city": long}).to_csv(data, index=False)
    pipeline.run(_cfg(data, no_select=True), tmp_path / "run", quiet=True)
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp"), "--quiet"])
    assert res.exit_code == 0, res.output
    files = [p.name for p in (tmp_path / "exp" / "vocab").iterdir()]
    assert all(len(n.encode()) <= 255 for n in files) and any(n.startswith("c" * 100 + "-") for n in files), files
    assert contract.vocab_file_name("c" * 300) != contract.vocab_file_name("c" * 299 + "d")
    row = {long: "paris", "dev": 3, "price": 5.0, "tags": "a|b", "noise": 1}
    assert 0 < Predictor(tmp_path / "exp").predict([row])[0] < 1


@pytest.mark.parametrize("inputs,dtype", [("ids", "fp32"), ("raw", "fp32"), ("ids", "fp16")])
def test_fields_named_like_numbers_or_the_exporters_own_values_export_by_their_names(tmp_path, inputs, dtype):
    """Columns of a frame written without a header are named 0, 1, ...: the exporter refuses '123' as an input name
    and renames an input '0' after a value of its own. The graph's inputs are named by the fields all the same (a
    value of the graph's that bears a field's name is renamed, after the fp16 tables were made from it), and the
    export validates and serves by them."""
    names = {"city": "0", "dev": "123", "price": "onnx::Unsqueeze_0", "noise": "model.embedding.weight"}
    data = tmp_path / "numbered.csv"
    pd.read_csv(make_csv(tmp_path / "d.csv")).rename(columns=names).to_csv(data, index=False)
    pipeline.run(_cfg(data, no_select=True, categorical="123"), tmp_path / "run", quiet=True)
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp"), "--inputs", inputs,
                              "--dtype", dtype, "--quiet"])
    assert res.exit_code == 0, res.output
    g = onnx.load(str(tmp_path / "exp" / contract.MODEL_FILE)).graph
    assert [i.name for i in g.input] == ["0", "123", "onnx::Unsqueeze_0", "tags", "model.embedding.weight"]
    assert [o.name for o in g.output] == [contract.OUTPUT_NAME]
    tables = {t.name: t.data_type for t in g.initializer if t.name in ("model.embedding.weight_",  # renamed
                                                                         "model.embedding.linear")}
    assert len(tables) == 2 and set(tables.values()) == {onnx.TensorProto.FLOAT16 if dtype == "fp16" else
                                                         onnx.TensorProto.FLOAT}, tables
    rows = [{"0": "paris", "123": 3, "onnx::Unsqueeze_0": 5.0, "tags": "a|b", "model.embedding.weight": 1},
            {"0": "rome", "123": 7, "onnx::Unsqueeze_0": 2.5, "tags": "", "model.embedding.weight": 4}]
    got = Predictor(tmp_path / "exp").predict(rows)
    want = torch_probs(tmp_path / "run", pd.DataFrame(rows))
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == "fp32" else 1e-2, atol=1e-6 if dtype == "fp32" else 1e-3)


def test_a_numeric_field_beyond_float32_is_refused_naming_it(tmp_path):
    """The graph reads numbers as float32: bucket edges of 1e300 would become infinite and merge the buckets, so the
    exported model would score other rows than the trained one. Refused in one line naming the field, nothing
    written."""
    data = tmp_path / "big.csv"
    df = pd.read_csv(make_csv(tmp_path / "d.csv"))
    df["price"] = df["price"] * 1e300  # integral numbers, so --numeric: it would read as categories
    df.to_csv(data, index=False)
    pipeline.run(_cfg(data, no_select=True, numeric="price"), tmp_path / "run", quiet=True)
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp"), "--quiet"])
    assert res.exit_code == 2 and "field 'price': its bucket edges reach" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "exp").exists()


def test_a_numeric_field_float32_cannot_bucket_as_training_did_is_refused_naming_it(tmp_path):
    """Seconds since 1970 over one hour: float32 holds them to 128 s while the bucket edges lie ~225 s apart, so the
    graph buckets a quarter of the rows elsewhere than training did, and the run's own model scores the test rows
    measurably worse so: refused in one line naming the field, nothing written. The AUC check alone let it pass: a
    model of one 16-bucket field has few distinct scores, and its allowance for ties was wider than the move."""
    rng = np.random.default_rng(9)
    t = 1_700_000_000 + rng.integers(0, 3600, 20_000)
    label = (rng.random(20_000) < 1 / (1 + np.exp(-1.5 * np.sin((t % 3600) / 3600 * 8 * np.pi)))).astype(int)
    pd.DataFrame({"t": t, "label": label}).to_csv(tmp_path / "t.csv", index=False)
    pipeline.run(_cfg(tmp_path / "t.csv", multi_hot=None, numeric="t", no_select=True, epochs=2), tmp_path / "run",
                 quiet=True)
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp"), "--quiet"])
    assert res.exit_code == 2 and "numeric field 't':" in res.output and "read as float32" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "exp").exists()


def test_values_float_noise_puts_at_a_bucket_edge_still_export(tmp_path):
    """Sums of prices (27.199999999999996 beside 27.2) at 64 buckets: float32 moves a few test rows across an edge,
    which scores them within noise of training's buckets: exported, the change recorded. The check of the test AUC
    against the run's compares like with like, allowing for what the float32 buckets move the run's own model's AUC
    by (here more than its 0.0012 alone: the export was refused before)."""
    rng = np.random.default_rng(0)
    prices = rng.integers(1, 200, (3000, 3)) / 10  # 0.1 .. 19.9, summed as a till does: 27.199999999999996
    total = prices[:, 0] + prices[:, 1] + prices[:, 2]
    label = (rng.random(3000) < 1 / (1 + np.exp(-3 * np.sin(total)))).astype(int)
    pd.DataFrame({"total": total, "c": rng.integers(0, 8, 3000).astype(str), "label": label}).to_csv(
        tmp_path / "p.csv", index=False)
    pipeline.run(_cfg(tmp_path / "p.csv", multi_hot=None, numeric="total", no_select=True, num_buckets=64,
                      epochs=5), tmp_path / "run", quiet=True)
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # the note as one line, however the console wrapped it
    assert "bucket differently" in said and "run's own model's test logloss by" in said, res.output
    v = json.loads((tmp_path / "exp" / "feature_schema.json").read_text())["validation"]
    assert v["numeric_bucket_mismatches"] > 0, v  # the rows at an edge are there
    # the field whose rows they are, in the report and in the note
    assert v["numeric_bucket_mismatches_by_field"] == {"total": v["numeric_bucket_mismatches"]}, v
    assert f"(rows by field: 'total' {v['numeric_bucket_mismatches']:,})" in said, res.output
    assert v["logloss_change_float32_buckets"] <= 2 * v["logloss_change_se"], v  # within noise
    shift = v["auc_torch_float32_buckets"] - v["auc_torch"]  # what the float32 buckets alone move the AUC by
    assert shift != 0 and abs(v["auc_diff_vs_run"] - shift) <= v["auc_tolerance"] < abs(v["auc_diff_vs_run"]), v


def test_a_test_split_of_one_label_exports_with_a_note_that_no_auc_was_compared(tmp_path):
    """The newest rows (the test split under --time-column) all have label 0: there is no test AUC, so the export
    checks the scores against PyTorch only, and says so (in the table's notes and in the validation report)."""
    df = pd.read_csv(make_csv(tmp_path / "d.csv"))
    df["t"] = np.arange(len(df))
    df.loc[len(df) * 8 // 10:, "label"] = 0
    df.to_csv(tmp_path / "one.csv", index=False)
    pipeline.run(_cfg(tmp_path / "one.csv", no_select=True, time_column="t"), tmp_path / "run", quiet=True)
    assert open_run(tmp_path / "run").metrics()["test"]["auc"] is None
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    assert "note:" in res.output and "hold one label only" in res.output, res.output
    v = json.loads((tmp_path / "exp" / "feature_schema.json").read_text())["validation"]
    assert "auc_onnx" not in v and "one label only" in v["auc_skipped"]


def test_a_numeric_field_beyond_float32_is_said_at_training_and_refused_at_export(tmp_path):
    """The exported graph reads numbers as float32: a field whose bucket edges lie beyond its range trains (in
    float64) with a warning that the export will refuse it, and the export refuses it in one line."""
    rng = np.random.default_rng(0)
    n = 1200
    a = rng.integers(0, 5, n)
    df = pd.DataFrame({"a": a.astype(str), "big": rng.normal(size=n) * 1e300,
                       "label": (rng.random(n) < 0.2 + 0.1 * a).astype(int)})
    df.to_csv(tmp_path / "d.csv", index=False)
    r = runner.invoke(app, ["run", "--data", str(tmp_path / "d.csv"), "--label", "label", "--no-select",
                            "--epochs", "1", "--hidden", "8", "--embed-dim", "4", "--out", str(tmp_path / "r"), "-q"])
    assert r.exit_code == 0 and "field 'big': its bucket edges reach" in r.output, r.output
    assert "lightfmp export` will refuse" in r.output
    r = runner.invoke(app, ["export", str(tmp_path / "r"), "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "beyond float32" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "e").exists()


def test_the_fp16_reference_reads_fp16_rounded_tables(s):
    """Validation compares the fp16 graph with a PyTorch module whose tables are the fp16 values: with the fp32
    tables a model of ordinary table scale would fail a correct export."""
    model, kept = open_run(s["runs"]["mlp"]).load_final()
    model.eval()
    with torch.no_grad():
        model.embedding.weight.normal_(0, 1.0)
    w = graph.serving_module(model, kept, "fp16").model.embedding.weight
    assert torch.equal(w, w.half().float()) and not torch.equal(w, model.embedding.weight)
