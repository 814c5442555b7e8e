"""Phase 1's optimizer carried through phase 3 (lightfmp.moments): the moments are cut like the weights, stored in
the run, and `lightfmp prune` continues a run as `lightfmp run` does."""
import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lightfmp.models import BACKBONES, ModelConfig, build_model
from lightfmp.moments import FILE, flatten, load_named_state, named_state, prune_moments, unflatten
from lightfmp.pruning import prune_model

from helpers import cli, one_line_error, write_csv
from test_pruning import kept_columns, randomize, schema_and_ids  # noqa: F401 (a fixture)

KEPT = ["a", "x", "tags"]


def _steps(model, opt, ids, y, gates, n):
    for _ in range(n):
        opt.zero_grad()
        logits = model(ids, gates=gates) if gates is not None else model(ids)
        F.binary_cross_entropy_with_logits(logits, y).backward()
        opt.step()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_a_step_from_carried_moments_keeps_pruned_equal_to_gated(schema_and_ids, backbone):
    """Train the gated model (the dropped fields' gates at 0, the kept ones at 1) for a few Adam steps, prune it and
    its optimizer state, then take one more step on each with the same rows: the pruned model still computes what
    the gated one computes. A fresh optimizer for the pruned model does not (the check can fail)."""
    schema, ids = schema_and_ids
    y = (ids[:, 0] % 2).float()
    model = build_model(backbone, schema, ModelConfig(embed_dim=4, hidden=[8], cross_layers=1), gated=True)
    randomize(model)
    model.eval()  # no dropout; the gates below are fixed, only the weights train
    with torch.no_grad():
        model.gate.log_alpha.fill_(10.0)  # every deterministic gate exactly 1
    assert torch.equal(model.gate.deterministic(), torch.ones(len(schema.names)))
    gates = torch.tensor([float(n in KEPT) for n in schema.names])
    opt = torch.optim.Adam(model.backbone_parameters(), lr=0.01)
    _steps(model, opt, ids, y, gates, 3)

    pruned, kept_schema = prune_model(model, schema, KEPT)
    state = prune_moments(model, schema, KEPT, None, named_state(model, [opt]))
    fresh = prune_model(model, schema, KEPT)[0]
    carried = torch.optim.Adam(pruned.backbone_parameters(), lr=0.01)
    load_named_state(pruned, [carried], state)
    x = kept_columns(schema, ids, kept_schema)
    _steps(model, opt, ids, y, gates, 1)
    _steps(pruned, carried, x, y, None, 1)
    _steps(fresh, torch.optim.Adam(fresh.backbone_parameters(), lr=0.01), x, y, None, 1)
    with torch.no_grad():
        expected, got, restarted = model(ids, gates=gates), pruned(x), fresh(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(restarted, expected, atol=1e-4), "a fresh optimizer should have moved differently"


def test_a_kept_field_whose_gate_is_shut_keeps_its_moments_as_they_were(schema_and_ids):
    """--keep K may keep a field whose deterministic gate is exactly 0 (the K most open stay): its weight is not
    scaled by the cut (dividing by z = 0 is no scale), so its moments are carried unchanged, not blown up by 1/z."""
    schema, _ = schema_and_ids
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    with torch.no_grad():
        model.gate.log_alpha.copy_(torch.tensor([-10.0, 3.0, 3.0, 3.0, 3.0]))
    assert float(model.gate.deterministic().detach()[0]) == 0.0
    torch.manual_seed(0)
    state = {n: {"step": torch.tensor(3.0, dtype=torch.float64), "exp_avg": torch.randn_like(p),
                 "exp_avg_sq": torch.rand_like(p)} for n, p in model.named_parameters() if not n.startswith("gate.")}
    out = prune_moments(model, schema, ["a", "b"], None, state)
    n = schema.field("a").vocab_size
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(out["embedding.weight"][k][:n], state["embedding.weight"][k][:n])


def test_moments_are_cut_like_the_weights_and_scaled_by_the_gate(schema_and_ids):
    """A kept field's embedding rows: the pruned weight is the gated one times the gate z, so its first moment is
    divided by z and its second by z squared (closed form); the tower's first layer keeps the kept fields' columns;
    the step is kept."""
    schema, ids = schema_and_ids
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    with torch.no_grad():
        model.gate.log_alpha.copy_(torch.tensor([-0.5, 0.0, 0.0, 0.0, 0.0]))
    z = model.gate.deterministic().detach()
    assert 0 < float(z[0]) < 1
    torch.manual_seed(0)
    state = {n: {"step": torch.tensor(7.0, dtype=torch.float64), "exp_avg": torch.randn_like(p),
                 "exp_avg_sq": torch.rand_like(p)} for n, p in model.named_parameters() if not n.startswith("gate.")}
    out = prune_moments(model, schema, ["a"], None, state)
    n = schema.field("a").vocab_size
    torch.testing.assert_close(out["embedding.weight"]["exp_avg"], state["embedding.weight"]["exp_avg"][:n] / z[0])
    torch.testing.assert_close(out["embedding.weight"]["exp_avg_sq"],
                               state["embedding.weight"]["exp_avg_sq"][:n] / z[0] ** 2)
    first = next(k for k in out if k.endswith(".weight") and k.startswith("deep."))
    torch.testing.assert_close(out[first]["exp_avg"], state[first]["exp_avg"][:, :4])  # a's 4 columns come first
    assert all(float(s["step"]) == 7.0 for s in out.values())
    assert not any(k.startswith("gate.") for k in out)


def test_stored_state_round_trips_and_sparse_adam_gets_an_int_step():
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = torch.optim.SparseAdam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    opt.step()
    holder = torch.nn.Module()
    holder.emb = emb
    state = unflatten(flatten(named_state(holder, [opt])))
    assert set(state) == {"emb.weight"} and set(state["emb.weight"]) == {"step", "exp_avg", "exp_avg_sq"}
    again = torch.optim.SparseAdam(emb.parameters())
    load_named_state(holder, [again], state)
    st = again.state_dict()["state"][0]
    assert st["step"] == 1 and isinstance(st["step"], int)
    torch.testing.assert_close(st["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_prune_continues_phase_1s_optimizer_as_run_does(tmp_path):
    """`lightfmp run` == `lightfmp train` then `lightfmp prune` (phase 1's optimizer state read from the run); a
    run written before the state was stored (no file, no `optimizer_state` in run.json) still prunes, with a fresh
    optimizer, and differs; a stored state that does not fit the model is a one-line error naming the file."""
    data = write_csv(tmp_path, n=800)
    flags = ["--data", data, "--label", "label", "--multi-hot", "tags:|", "--epochs", "2", "--pretrain-epochs", "2",
             "--quiet"]
    assert cli("run", *flags, "--out", tmp_path / "whole").exit_code == 0
    assert cli("train", *flags, "--out", tmp_path / "parts").exit_code == 0
    assert (tmp_path / "parts" / FILE).is_file()
    shutil.copytree(tmp_path / "parts", tmp_path / "old")
    shutil.copytree(tmp_path / "parts", tmp_path / "bad")
    (tmp_path / "old" / FILE).unlink()
    info = json.loads((tmp_path / "old" / "run.json").read_text())
    del info["optimizer_state"]  # and a run of that time recorded no sha256 of it (run format 2)
    info["weights_sha256"].pop(FILE)
    (tmp_path / "old" / "run.json").write_text(json.dumps({**info, "format_version": 2}))
    state = unflatten(load_file(str(tmp_path / "bad" / FILE)))
    state["embedding.weight"]["exp_avg"] = state["embedding.weight"]["exp_avg"][:-1]
    save_file(flatten(state), str(tmp_path / "bad" / FILE))
    one_line_error(cli("prune", tmp_path / "bad", "--quiet"), FILE, "changed since the run wrote it")
    info = json.loads((tmp_path / "bad" / "run.json").read_text())  # the state recorded as written: read, and refused
    info["weights_sha256"][FILE] = hashlib.sha256((tmp_path / "bad" / FILE).read_bytes()).hexdigest()
    (tmp_path / "bad" / "run.json").write_text(json.dumps(info))
    line = one_line_error(cli("prune", tmp_path / "bad", "--quiet"), FILE, "embedding.weight")
    assert "does not fit" in line
    for name in ("parts", "old"):
        r = cli("prune", tmp_path / name, "--quiet")
        assert r.exit_code == 0, r.output
    test = {n: json.loads((tmp_path / n / "metrics.json").read_text())["test"] for n in ("whole", "parts", "old")}
    assert test["parts"] == test["whole"], test
    assert test["old"]["logloss"] != test["whole"]["logloss"], test  # AUC on ~80 test rows can tie
