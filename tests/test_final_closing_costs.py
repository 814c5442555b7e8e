"""benchmarks/final_closing_costs.py: each field's closing cost on a finished run's final model."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from helpers import cli, write_csv

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "final_closing_costs.py"
spec = importlib.util.spec_from_file_location("final_closing_costs", SCRIPT)
final_closing_costs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(final_closing_costs)


def test_the_planted_signal_costs_and_the_noise_does_not(tmp_path):
    data = write_csv(tmp_path, n=4000)
    out = tmp_path / "run"
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--no-select", "--epochs", "3",
            "--batch-size", "128", "--hidden", "16", "--embed-dim", "4", "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    report = tmp_path / "costs.json"
    final_closing_costs.main([str(out), "--json", str(report)])
    costs = json.loads(report.read_text())[str(out)]
    assert sorted(costs) == sorted(json.loads((out / "metrics.json").read_text())["fields"]["kept"])
    # 'a' moves the logit by +-2, 'b' by +-1.5: closing either costs beyond the closing test's two standard errors
    # (on ~400 validation rows); 'noise' and 'tags' carry nothing
    assert costs["a"] > 2 and costs["b"] > 2, costs
    assert costs["noise"] < 2 and costs["tags"] < 2, costs
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # the run is only read
