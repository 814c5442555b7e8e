"""benchmarks/noise_pairs.py: the flags of a kept-fields-from-scratch run and when a finished run is reused."""
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "noise_pairs.py"
spec = importlib.util.spec_from_file_location("noise_pairs", SCRIPT)
noise_pairs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(noise_pairs)


def test_without_takes_dropped_fields_out_of_every_list_in_either_form():
    flags = ["--data", "x.csv", "--numeric=a,b", "--ignore=ID", "--hash-buckets", "a:100,c:10",
             "--categorical", "c,d", "--multi-hot", "d:|"]
    assert noise_pairs.without(flags, {"a", "d"}) == [
        "--data", "x.csv", "--numeric", "b", "--hash-buckets", "c:10", "--categorical", "c", "--ignore", "ID,a,d"]
    # a plain bucket count covers every categorical field: nothing to take out
    assert noise_pairs.without(["--hash-buckets", "1000", "--categorical", "c,d"], {"d"}) == [
        "--hash-buckets", "1000", "--categorical", "c", "--ignore", "d"]


@pytest.mark.parametrize("flag", ["--config", "--schema=s.json"])
def test_without_refuses_lists_it_cannot_see(flag):
    with pytest.raises(SystemExit, match="--config or --schema"):
        noise_pairs.without(["--data", "x.csv", flag] + (["c.yaml"] if "=" not in flag else []), {"a"})


def test_a_finished_run_is_reused_only_for_the_same_flags(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, capture_output, text):
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"test": {"auc": 0.5 + len(calls) / 100}}))
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(noise_pairs.subprocess, "run", fake_run)
    out = tmp_path / "default_s0_t0"
    first = noise_pairs.lightfmp_run(["--data", "a.csv"], out)
    assert noise_pairs.lightfmp_run(["--data", "a.csv"], out) == first and len(calls) == 1  # reused
    other = noise_pairs.lightfmp_run(["--data", "b.csv"], out)  # other flags, same name: run again
    assert len(calls) == 2 and other != first
    assert json.loads((tmp_path / "runs.json").read_text()) == {"default_s0_t0": ["--data", "b.csv"]}
    (tmp_path / "runs.json").unlink()  # a run the ledger does not record is not trusted
    noise_pairs.lightfmp_run(["--data", "b.csv"], out)
    assert len(calls) == 3


def test_summary_reports_both_standard_errors():
    line = noise_pairs.summary("d", noise_pairs.np.array([-0.004, -0.002, 0.001, -0.003]), [-0.003, 0.0])
    # mean -0.002; pairs' SE = std(ddof=1) / 2 = 0.002160 / 2; split means' SE = 0.002121 / sqrt(2) = 0.0015
    assert line.startswith("d: -0.0020 ± 0.0011 over 4 pairs (split means -0.0030 / +0.0000, their SE 0.0015)")
    assert "at most 0.002 below: 2" in line and "single runs -0.0040..+0.0010" in line


def test_the_stability_line_counts_the_seeds_first_runs():
    """Three seeds' first runs keep {a, b}, {a, b}, {a, c} of 5 fields (the estimator's closed form is in
    tests/test_metrics.py); their later runs count in the stability over every run only."""
    pairs = [{"t": 0, "kept": ["a", "b"]}, {"t": 0, "kept": ["b", "a"]}, {"t": 0, "kept": ["a", "c"]},
             {"t": 1, "kept": ["d", "e"]}]
    line = noise_pairs.stability_line(pairs, 5)
    first = 1 - (2 / 15) / (0.4 * 0.6)
    every = noise_pairs.selection_stability([p["kept"] for p in pairs], 5)
    assert line == (f"kept sets: stability {every:.2f} over the 4 default runs, {first:.2f} over the 3 seeds' first "
                    f"runs (t = 0), whose most common set is kept on 2 of them")
    assert "undefined" in noise_pairs.stability_line([{"t": 0, "kept": ["a"]}], 5)
