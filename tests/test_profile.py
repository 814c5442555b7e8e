"""`lightfmp profile`: tables, --compare, --json / --plot / --trace, and refusals."""
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lightfmp import profiling
from lightfmp.cli.app import app
from lightfmp.errors import LightFMPError
from test_export import get_export, runner, shared

FAST = ["--batch-sizes", "1,16", "--max-seconds", "0.05", "--max-runs", "20"]


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    return shared(tmp_path_factory)


def test_profile_compare_json_plot_trace(s, tmp_path):
    pruned, full = get_export(s, "deepfm"), get_export(s, "mlp")
    j, png, trace = tmp_path / "r.json", tmp_path / "lat.png", tmp_path / "trace.json"
    res = runner.invoke(app, ["profile", str(pruned), "--compare", str(full), *FAST, "--json", str(j),
                              "--plot", str(png), "--trace", str(trace)])
    assert res.exit_code == 0, res.output
    assert "p50" in res.stdout and "eager" in res.stdout
    d = json.loads(j.read_text())
    rows = d["results"]
    assert [(r["model"], r["batch_size"]) for r in rows] == [(str(pruned), 1), (str(pruned), 16),
                                                            (str(full), 1), (str(full), 16)]
    for r in rows:
        assert {"model", "batch_size", "p50_ms", "p95_ms", "p99_ms", "rows_per_s"} <= set(r)
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["rows_per_s"] > 0
        assert r["model_bytes"] > 0 and r["request_bytes"] > 0
    # the pruned model reads fewer fields: smaller requests
    assert rows[0]["request_bytes"] < rows[2]["request_bytes"]
    assert len(d["eager"]) == 4 and d["eager"][0]["engine"] == "torch-eager"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = json.loads(trace.read_text())
    assert isinstance(events, list) and events


def test_profile_raw_export_and_no_eager(s, tmp_path):
    j = tmp_path / "r.json"
    res = runner.invoke(app, ["profile", str(get_export(s, "mlp", inputs="raw") / "model.onnx"), *FAST,
                              "--json", str(j), "--quiet"])
    assert res.exit_code == 0, res.output
    d = json.loads(j.read_text())
    assert len(d["results"]) == 2 and d["eager"] == [] and "raw" in d["models"][0]["eager_note"]



def test_eager_timing_is_of_the_exported_weights_only(s):
    """The export records its run's model.safetensors by sha256: a run trained again under the same name (same
    fields, other weights) is not timed as the exported model's eager twin."""
    from lightfmp.export.bundle import load_bundle
    from lightfmp.io import file_sha256
    bundle = load_bundle(get_export(s, "deepfm"))
    mod, note = profiling._eager_module(bundle)
    assert mod is not None and note is None
    run = s["runs"]["deepfm"]
    assert bundle.contract.run_weights_sha256 == file_sha256(run / "model.safetensors")
    bundle.contract.run_weights_sha256 = "0" * 64  # as if the run had been trained again since the export
    mod, note = profiling._eager_module(bundle)
    assert mod is None and "does not hold the exported model (its model.safetensors differs" in note

def test_profile_of_non_onnx_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("this is not a protobuf\n")
    res = runner.invoke(app, ["profile", str(bad)])
    assert res.exit_code == 2 and "not an ONNX model" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(app, ["profile", str(tmp_path)])
    assert res.exit_code == 2 and "not a lightfmp export" in res.stderr
    res = runner.invoke(app, ["profile", str(tmp_path / "nope.onnx")])
    assert res.exit_code == 2 and "not found" in res.stderr


def test_profile_bad_batch_sizes():
    assert profiling.parse_batch_sizes("8,1,8") == [8, 1] and profiling.parse_clients("4,4") == [4]  # once each
    with pytest.raises(LightFMPError, match="--batch-sizes"):
        profiling.parse_batch_sizes("1,x")
    with pytest.raises(LightFMPError, match=">= 1"):
        profiling.parse_batch_sizes("0")
    for text in ("", "1,,8", "8,"):  # an empty item is a typo, not a default: named, like any bad list
        with pytest.raises(LightFMPError, match=f"--batch-sizes {text!r}"):
            profiling.parse_batch_sizes(text)
        with pytest.raises(LightFMPError, match=f"--clients {text!r}"):
            profiling.parse_clients(text)
    assert profiling.parse_batch_sizes(" 1, 8") == [1, 8] and profiling.parse_clients("32") == [32]


def test_profile_plain_onnx_without_lightfmp_metadata(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    nodes = [helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "kf"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, k], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "plain.onnx")
    res = profiling.profile([tmp_path / "plain.onnx"], [1, 4], budget=profiling.Budget(max_seconds=0.01, max_runs=5))
    assert [r["batch_size"] for r in res[0].rows] == [1, 4] and not res[0].eager


def test_profile_plain_onnx_with_an_int32_input_and_a_weight_listed_as_input(tmp_path):
    """A file without metadata gets generic inputs from its graph: an int32 input is one, an initializer that an
    older exporter also lists as a graph input is not (ONNX Runtime does not ask for it)."""
    k = helper.make_tensor_value_info("ids", TensorProto.INT32, ["n"])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    nodes = [helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT), helper.make_node("Mul", ["f", "w"], ["y"])]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(nodes, "g", [k, w], [y], initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "i.onnx")
    res = profiling.profile([tmp_path / "i.onnx"], [1, 4], budget=profiling.Budget(max_seconds=0.01, max_runs=5))
    assert [r["batch_size"] for r in res[0].rows] == [1, 4] and res[0].bundle.contract.names == ["ids"]


def _plain_graph(path, dtype, shape, out_shape=None):
    """A one-input graph (Relu of the input, cast to float) without lightfmp metadata."""
    x = helper.make_tensor_value_info("x", dtype, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or shape)
    nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT), helper.make_node("Relu", ["f"], ["y"])]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), path)
    return path


@pytest.mark.parametrize("dtype, shape", [
    (TensorProto.FLOAT, ["n", 4]),       # numbers per row: lightfmp's numeric inputs are one per row
    (TensorProto.FLOAT, [3, 4]),         # a fixed batch
    (TensorProto.INT64, ["n", "len"]),   # ids with a free second dimension
    (TensorProto.INT64, ["n", 2, 3]),    # rank 3
    (TensorProto.INT64, []),             # a scalar
])
def test_plain_onnx_with_inputs_lightfmp_cannot_generate_is_refused_naming_the_input(tmp_path, dtype, shape):
    model = _plain_graph(tmp_path / "f.onnx", dtype, shape)
    res = runner.invoke(app, ["profile", str(model), "--batch-sizes", "2", "--no-eager"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    fixed = isinstance(shape[0], int) if shape else False
    assert f"{model}: input 'x' has " in res.stderr
    assert ("fixed batch of 3" if fixed else "[batch, L] ids with L fixed") in res.stderr, res.stderr


def test_plain_onnx_with_ids_of_fixed_length_per_row_is_timed(tmp_path):
    model = _plain_graph(tmp_path / "m.onnx", TensorProto.INT64, ["n", 5])
    res = profiling.profile([model], [1, 4], budget=profiling.Budget(max_seconds=0.01, max_runs=5))
    assert [r["batch_size"] for r in res[0].rows] == [1, 4]
    assert [(s.kind, s.max_len) for s in res[0].bundle.contract.inputs] == [("multi_hot", 5)]


def test_one_file_for_two_outputs_is_refused_before_any_timing(s, tmp_path):
    out = tmp_path / "x.json"
    res = runner.invoke(app, ["profile", str(get_export(s, "mlp")), *FAST, "--json", str(out), "--trace",
                              str(tmp_path / "." / "x.json")])
    assert res.exit_code == 2 and "given to both --json and --trace" in res.stderr and not out.exists()
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)  # the same file through a link
    res = runner.invoke(app, ["profile", str(get_export(s, "mlp")), *FAST, "--json", str(out), "--plot",
                              str(tmp_path / "y.png"), "--trace", str(tmp_path / "link" / "x.json")])
    assert res.exit_code == 2 and "given to both --json and --trace" in res.stderr and not out.exists()


def test_a_stopped_trace_leaves_no_file_of_onnx_runtime(s, tmp_path, monkeypatch):
    """Stopped while it runs (Ctrl-C, or SIGTERM, which ends a command the same way), --trace removes the file ONNX
    Runtime was writing; nothing is left beside the output."""
    real = profiling.feeds_for

    def stop_at_the_second(bundle, b):
        if b == 16:
            raise KeyboardInterrupt
        return real(bundle, b)

    monkeypatch.setattr(profiling, "feeds_for", stop_at_the_second)
    bundle = profiling.load_bundle(get_export(s, "mlp"))
    with pytest.raises(KeyboardInterrupt):
        profiling._trace(bundle, [1, 16], 1, tmp_path / "t.json")
    assert list(tmp_path.iterdir()) == []


def test_request_bytes_counts_text():
    assert profiling.request_bytes({"a": np.zeros(4, np.int64), "b": np.array(["ab", "c"], dtype=object)}) == 35


def test_profile_refuses_a_changed_export(s, tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(get_export(s, "deepfm"), d)
    vocab = next((d / "vocab").iterdir())
    vocab.write_text(vocab.read_text().replace("}", ', "extra": 999}'))
    res = runner.invoke(app, ["profile", str(d), *FAST])
    assert res.exit_code == 2 and f"{vocab}: sha256 differs" in res.stderr and "Traceback" not in res.output


def test_a_model_twice_is_refused_however_it_is_named(s, tmp_path):
    """An export directory and its model.onnx are one model: timing it against itself compares nothing."""
    e = get_export(s, "mlp")
    r = runner.invoke(app, ["profile", str(e / "model.onnx"), "--compare", str(e), "--max-runs", "1", "--quiet"])
    assert r.exit_code == 2 and "the same model was given twice" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_a_compare_that_is_not_there_is_named_as_the_flag(s, tmp_path):
    r = runner.invoke(app, ["profile", str(get_export(s, "mlp")), "--compare", str(tmp_path / "nope"), "--max-runs",
                            "1", "--quiet"])
    assert r.exit_code == 2 and f"--compare {tmp_path / 'nope'}: no such export or ONNX file" in r.output, r.output


def test_clients_without_a_url_is_refused_not_ignored(s):
    r = runner.invoke(app, ["profile", str(get_export(s, "mlp")), "--clients", "0", "--max-runs", "1", "--quiet"])
    assert r.exit_code == 2 and "--clients '0': only with --url" in r.output, r.output


def test_the_percentiles_are_the_ones_their_names_say():
    """p50 / p95 / p99 are numpy's (linear) percentiles of the timed runs, and rows per second is the batch over
    the median latency."""
    s = profiling.summarize("m", 8, np.arange(1, 101) / 1e3)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(99.01) and s["runs"] == 100
    assert s["rows_per_s"] == pytest.approx(8 / 0.0505)


def test_timing_goes_on_past_the_minimum_while_time_is_left():
    """Timed runs continue after `min_runs` until `max_runs` while `max_seconds` has not passed; with no time left
    it stops at `min_runs`."""
    t = profiling.time_calls(lambda: None, profiling.Budget(warmup=0, min_runs=5, max_runs=50, max_seconds=10))
    assert len(t) == 50
    t = profiling.time_calls(lambda: None, profiling.Budget(warmup=0, min_runs=5, max_runs=50, max_seconds=0))
    assert len(t) == 5


def test_warm_up_runs_are_made_and_not_timed():
    """The warm-up calls run before the timed ones and are not among the times."""
    calls = []
    t = profiling.time_calls(lambda: calls.append(1), profiling.Budget(warmup=3, min_runs=2, max_runs=2,
                                                                       max_seconds=5))
    assert len(calls) == 5 and len(t) == 2


def test_profile_gives_back_the_callers_torch_thread_count(s):
    """Timing PyTorch eager with threads=N sets torch's (process-wide) thread count only while it times: the
    caller's count is as it was afterwards."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = profiling.profile([get_export(s, "deepfm")], [1], threads=3,
                                budget=profiling.Budget(warmup=0, min_runs=1, max_runs=1, max_seconds=0.01))
        assert len(res[0].eager) == 1  # the eager timing ran
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_profile_url_refuses_a_server_whose_model_has_other_inputs(tmp_path, monkeypatch):
    """`profile --url` first reads the served model's inputs: a model there with other inputs than the export's
    (another datatype, or an input more) is refused in one line before any load is sent; the same inputs pass."""
    from lightfmp.serve.protocol import model_metadata
    model = _plain_graph(tmp_path / "m.onnx", TensorProto.INT64, ["n", 5])
    bundle = profiling.load_bundle(model)
    inputs = model_metadata(bundle.contract, "m")["inputs"]
    served = {}
    monkeypatch.setattr(profiling, "get_json", lambda target, path: (200, {"inputs": served["inputs"]}))

    def no_load(*a, **k):
        raise AssertionError("a load was sent before the inputs were checked")
    monkeypatch.setattr(profiling, "measure", no_load)
    for other in ([{**inputs[0], "datatype": "INT32"}],  # another datatype
                  inputs + [{"name": "extra", "datatype": "INT64", "shape": [-1]}]):  # the export's and one more
        served["inputs"] = other
        res = runner.invoke(app, ["profile", str(model), "--url", "http://127.0.0.1:1", "--max-runs", "1"])
        assert res.exit_code == 2 and "not the export's" in res.stderr, res.output
        assert len(res.stderr.strip().splitlines()) == 1
    served["inputs"] = inputs
    profiling.check_served(profiling.Target.parse("http://127.0.0.1:1"), bundle, "m")  # the same inputs: served


def test_the_plots_band_is_p50_to_p95(monkeypatch, tmp_path):
    """profile.png's band, labelled p50-p95, runs from each batch size's p50 to its p95 (not its p99)."""
    import matplotlib.axes
    drawn = []
    real = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                        lambda self, x, y1, y2=0, **k: (drawn.append((list(x), list(y1), list(y2))),
                                                        real(self, x, y1, y2, **k))[1])
    rows = [{"batch_size": b, "p50_ms": p, "p95_ms": 2 * p, "p99_ms": 3 * p} for b, p in ((1, 0.5), (8, 1.0))]
    profiling.plot([profiling.ModelTimings("m.onnx", None, rows)], tmp_path / "p.png")
    assert drawn == [([1, 8], [0.5, 1.0], [1.0, 2.0])]
