"""benchmarks/progressive_costs.py: each field's closing cost on the batches of phase 3's first epoch, before each step."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from helpers import fitted_frame, write_csv
from lightfmp import keep_rule, pipeline, training
from lightfmp.models import ModelConfig, build_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "progressive_costs.py"
spec = importlib.util.spec_from_file_location("progressive_costs", SCRIPT)
progressive_costs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(progressive_costs)

FLAGS = ["--label", "label", "--multi-hot", "tags:|", "--epochs", "3", "--pretrain-epochs", "2", "--batch-size",
         "128", "--hidden", "16", "--embed-dim", "4"]


def test_a_batchs_closing_costs_are_each_rows_loss_with_the_fields_slots_of_the_row_before():
    schema, ids = fitted_frame(40)
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]))
    y = (np.arange(40) % 3 == 0).astype(np.float32)
    p = progressive_costs.Progressive()
    p.add(model, ids.numpy(), y)
    slot_field = model.embedding.slot_field.numpy()
    model.eval()
    with torch.no_grad():
        base = F.binary_cross_entropy_with_logits(model(ids), torch.from_numpy(y), reduction="none").double()
        for f in range(len(schema.fields)):
            d = []
            for i in range(40):  # by hand: row i with field f's slots of row i - 1 (row 0: the last row)
                row = ids[i].clone()
                cols = slot_field == f
                row[cols] = ids[i - 1][cols]
                d.append(float(F.binary_cross_entropy_with_logits(model(row[None]), torch.tensor([y[i]]))) - base[i])
            d = np.array(d)
            assert np.allclose(p.stats[f], [d.sum(), (d * d).sum(), 40], rtol=1e-3, atol=1e-8)  # float32 passes
    assert model.training is False  # it leaves the model in the mode it found


def test_the_first_epochs_rows_are_measured_and_the_rule_keeps_what_they_show(tmp_path):
    data = write_csv(tmp_path, n=3000)
    res = progressive_costs.measure(["--data", str(data), *FLAGS], str(tmp_path / "p"))
    m = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert res["progressive_rows"] == m["phases"]["continue"]["rows"] - m["phases"]["pretrain"]["rows"]
    assert sorted(res["fields"]) == sorted(m["selection"]["search"]["order"][:len(res["fields"])])
    # 'a' moves the logit by +-2 over ~2,400 fresh rows: far beyond two standard errors; 'noise' carries nothing
    assert res["fields"]["a"]["z_progressive"] > 2 > res["fields"]["noise"]["z_progressive"], res["fields"]
    rule = progressive_costs.measure(["--data", str(data), *FLAGS], str(tmp_path / "q"), rule=True)
    shown = [n for n, f in rule["fields"].items() if f["z_progressive"] > 2]
    assert shown and set(shown) <= set(rule["kept"])
    # lightfmp's own functions are back after the measured run
    assert pipeline.fit is progressive_costs.pipeline.fit and pipeline.fit.__module__ == "lightfmp.training"
    assert training.Trainer.train_step.__qualname__ == "Trainer.train_step"
    assert keep_rule.backward_sweep.__module__ == "lightfmp.keep_rule"
