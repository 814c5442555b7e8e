"""The final model of a model-selecting fit without gates: the mean of its tied epochs (lightfmp.averaging)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from lightfmp import training
from lightfmp.averaging import copies_allowed, mean_weights, tie
from lightfmp.checkpoint import Checkpoint
from lightfmp.models import ModelConfig, build_model
from lightfmp.rows import ArrayRows
from lightfmp.schema import FeatureSchema, Field
from lightfmp.training import TrainConfig, fit, validate

SE = 0.2 / np.sqrt(10_000)  # the standard error of the paired difference of the losses `_above` makes


def _above(low: np.ndarray, k: float, seed: int) -> np.ndarray:
    """Per-row losses k standard errors of the paired difference above `low`, with noise of their own."""
    noise = np.random.default_rng(seed).normal(0.0, 0.2, len(low))
    return low + noise - noise.mean() + k * SE


def _low() -> np.ndarray:
    return np.random.default_rng(0).exponential(0.5, 10_000)


def test_the_mean_is_the_element_wise_mean_and_a_counter_is_the_last_epochs():
    tied = {e: ({"w": torch.tensor([1.0, 2.0]) * (e + 2), "n": torch.tensor(e + 10)}, np.zeros(2)) for e in (-1, 0, 4)}
    out = mean_weights(tied)
    assert torch.allclose(out["w"], torch.tensor([1.0 + 2.0 + 6.0, 2.0 + 4.0 + 12.0]) / 3, rtol=0, atol=1e-7)
    assert out["w"].dtype == torch.float32
    assert out["n"].item() == 14


def _snap(tag):
    return lambda: {"w": torch.tensor([float(tag)])}


def test_an_epoch_is_tied_while_not_measurably_worse_than_the_lowest():
    low = _low()
    tied = tie({}, 0, low, low, 10, _snap(0))
    tied = tie(tied, 1, within := _above(low, 1.0, 1), low, 10, _snap(1))
    assert sorted(tied) == [0, 1] and tied[1][1] is within and tied[1][0]["w"].item() == 1.0
    taken = []
    tied = tie(tied, 2, _above(low, 4.0, 2), low, 10, lambda: taken.append(2))  # measurably worse: not tied
    assert sorted(tied) == [0, 1] and not taken  # and its weights are never copied
    lower = low - 6 * SE  # a new lowest epoch, 6 SE below epoch 0 and ~7 below epoch 1
    tied = tie(tied, 3, lower, lower, 10, _snap(3))
    assert sorted(tied) == [3]  # the others are now measurably worse than the lowest: they leave for good
    tied = tie(tied, 4, np.full(10_000, np.nan), lower, 10, _snap(4))
    assert sorted(tied) == [3]


def test_past_the_limit_the_epochs_with_the_highest_logloss_go_first_and_are_never_copied():
    low = _low()
    tied, taken = {}, []

    def snap(e):
        return lambda: taken.append(e) or {"w": torch.tensor([float(e)])}
    for e, k in enumerate([1.5, 0.0, 1.0, 0.5, 1.8]):
        tied = tie(tied, e, _above(low, k, e) if k else low, low, 2, snap(e))
    assert sorted(tied) == [1, 3]
    assert taken == [0, 1, 2, 3]  # epoch 4, the highest with two lower ones kept, was never copied


def test_past_the_limit_of_equal_loglosses_the_later_epoch_goes():
    """A tie in mean logloss drops the later epoch (the earlier has the weights the later ones only repeated)."""
    low = _low()
    same = _above(low, 1.0, 7)
    tied = tie({}, 0, low, low, 2, _snap(0))
    tied = tie(tied, 1, same, low, 2, _snap(1))
    tied = tie(tied, 2, same.copy(), low, 2, _snap(2))  # the same mean as epoch 1, bit for bit
    assert sorted(tied) == [0, 1]


def test_the_copies_the_budget_holds():
    model = torch.nn.Linear(255, 1)  # 256 float32 weights: 1 KiB
    assert copies_allowed(model, 10 << 10) == 10
    assert copies_allowed(model, 100) == 0
    assert copies_allowed(model, (2 << 10) - 1) == 1  # a byte short of two copies holds one: no averaging


def test_the_mean_is_summed_in_float64():
    """Weights far apart in size keep their small parts: float32 sums would lose 1 beside 1e8."""
    tied = {e: ({"w": torch.tensor([v])}, np.zeros(1)) for e, v in enumerate([1e8, 1.0, -1e8])}
    assert mean_weights(tied)["w"].item() == pytest.approx(1 / 3, abs=1e-6)


# ---- fit ---------------------------------------------------------------------------------------------------------
def _data(seed: int = 0):
    """600 rows of 4 fields (ids 2..11), the label leaning on f0 and f1, split 400 / 200."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 12, size=(600, 4)).astype(np.int32)
    y = (rng.random(600) < 1 / (1 + np.exp(-(ids[:, 0] + ids[:, 1] - 14) / 2.0))).astype(np.float32)
    schema = FeatureSchema("y", [Field(f"f{i}", "categorical", vocab=[f"v{j}" for j in range(10)]) for i in range(4)])
    return schema, ArrayRows(ids[:400], y[:400]), ArrayRows(ids[400:], y[400:])


def _model(schema, gated=False):
    torch.manual_seed(0)
    return build_model("mlp", schema, ModelConfig(embed_dim=3, hidden=[8]), gated=gated)


CFG = TrainConfig(epochs=6, batch_size=32, lr=0.01, patience=0)


@pytest.fixture
def snapshots(monkeypatch):
    """The weights of the model at each validation in fit (after each epoch, then the mean's), in order."""
    seen = []

    def recording(model, rows, device="cpu", batch_size=8192):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return validate(model, rows, device, batch_size)
    monkeypatch.setattr(training, "validate", recording)
    return seen


def test_the_final_model_is_the_mean_of_the_tied_epochs_as_validated(snapshots):
    schema, rows, valid = _data()
    model = _model(schema)
    hist = fit(model, rows, valid, CFG)
    avg = hist["averaged"]
    assert avg["used"] and len(avg["epochs"]) >= 2
    assert len(snapshots) == len(hist["epochs"]) + 1  # one validation per epoch and one of the mean
    final = model.state_dict()
    for k, v in final.items():
        mean = torch.stack([snapshots[e - 1][k].double() for e in avg["epochs"]]).mean(0)
        assert torch.allclose(v.double(), mean, rtol=0, atol=1e-6), k
    assert avg["valid"] == validate(model, valid)[0]
    # the tied epochs are those not measurably worse than the lowest-logloss epoch
    losses = [e["valid"]["logloss"] for e in hist["epochs"]]
    assert int(np.argmin(losses)) + 1 in avg["epochs"]


def test_without_averaging_the_final_model_is_the_best_epoch_bit_for_bit(snapshots):
    schema, rows, valid = _data()
    model = _model(schema)
    hist = fit(model, rows, valid, replace(CFG, average_epochs=False))
    assert "averaged" not in hist and len(snapshots) == len(hist["epochs"])
    best = snapshots[hist["best_epoch"] - 1]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())


def test_a_mean_measurably_worse_than_the_lowest_epoch_is_not_used(snapshots, monkeypatch):
    """Weights from different stretches of training need not average to a good model: a mean whose validation
    logloss is worse than the lowest epoch's beyond noise gives way to the best epoch."""
    schema, rows, valid = _data()
    monkeypatch.setattr(training, "mean_weights", lambda tied: {k: torch.zeros_like(v) if v.is_floating_point()
                                                                else v for k, v in tied[max(tied)][0].items()})
    model = _model(schema)
    hist = fit(model, rows, valid, CFG)
    assert hist["averaged"]["used"] is False
    best = snapshots[hist["best_epoch"] - 1]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())


def test_the_model_a_fit_was_given_is_one_of_the_tied():
    """lr 0: the fit's one epoch scores exactly what the model as given did, so both are tied (a difference of
    exactly 0 is no evidence; the epochs averaged name the given model as 0). Both are the same weights, so the final
    model is the given one (that the mean is taken is tested below, with epochs that differ)."""
    schema, rows, valid = _data()
    model = _model(schema)
    fit(model, rows, valid, replace(CFG, epochs=2))
    given = {k: v.clone() for k, v in model.state_dict().items()}
    hist = fit(model, rows, valid, replace(CFG, epochs=1, lr=0.0), given=validate(model, valid))
    assert hist["averaged"]["epochs"] == [0, 1] and hist["averaged"]["used"]
    assert all(torch.equal(v, given[k]) for k, v in model.state_dict().items())


def test_the_mean_reads_the_given_models_own_weights(snapshots, monkeypatch):
    """Every epoch tied (the test patched to find nothing worse, the mean included): the final model is the mean of
    the model as given (its validation, before the fit, is the first snapshot) and the fit's epochs."""
    import lightfmp.averaging as averaging
    for module in (averaging, training):
        monkeypatch.setattr(module, "worse_beyond_noise", lambda new, old: False)
    schema, rows, valid = _data()
    model = _model(schema)
    fit(model, rows, valid, replace(CFG, epochs=2))
    snapshots.clear()
    hist = fit(model, rows, valid, replace(CFG, epochs=3), given=training.validate(model, valid))
    assert hist["averaged"]["epochs"] == [0, 1, 2, 3] and hist["averaged"]["used"]
    for k, v in model.state_dict().items():
        mean = torch.stack([snapshots[i][k].double() for i in range(4)]).mean(0)
        assert torch.allclose(v.double(), mean, rtol=0, atol=1e-6), k
    assert not torch.equal(snapshots[0][next(iter(snapshots[0]))], snapshots[3][next(iter(snapshots[0]))])


def test_a_budget_of_one_copy_never_averages(monkeypatch, tmp_path):
    from safetensors.torch import load_file
    monkeypatch.setattr(training, "copies_allowed", lambda model, budget: 1)
    schema, rows, valid = _data()

    def stop(epoch):
        if epoch == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit(_model(schema), rows, valid, replace(CFG, lr=0.05), checkpoint=Checkpoint(tmp_path, "p", {}),
            epoch_start=stop)
    assert not [k for k in load_file(str(tmp_path / "p.safetensors")) if k.startswith(("tied.", "valid_losses.tied"))]
    assert "averaged" not in fit(_model(schema), rows, valid, replace(CFG, lr=0.05))


def test_gated_fits_and_fits_that_keep_the_last_epoch_never_average():
    schema, rows, valid = _data()
    assert "averaged" not in fit(_model(schema, gated=True), rows, valid, CFG)
    assert "averaged" not in fit(_model(schema), rows, valid, CFG, select_best=False)
    assert "averaged" not in fit(_model(schema), rows, valid, CFG, in_memory_mb=0)  # room for no epoch's weights


def _timeless(hist: dict) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in hist["epochs"]]


@pytest.mark.parametrize("stop_at", [1, 3, 5])
def test_a_resumed_fit_with_a_given_model_and_a_limit_of_two_is_exact(tmp_path, stop_at, monkeypatch):
    """The given model (epoch -1, sharing the best epoch's weights while it is the best) and evictions at a limit of
    two copies survive a resume: the same history, the same mean, bit for bit."""
    monkeypatch.setattr(training, "copies_allowed", lambda model, budget: 2)
    schema, rows, valid = _data()
    cfg = replace(CFG, lr=0.003)

    def start():
        model = _model(schema)
        fit(model, rows, valid, replace(cfg, epochs=2))
        return model, training.validate(model, valid)
    model, given = start()
    whole = fit(model, rows, valid, cfg, given=given)
    want = {k: v.clone() for k, v in model.state_dict().items()}

    def stop(epoch):
        if epoch == stop_at:
            raise KeyboardInterrupt
    model, given = start()
    with pytest.raises(KeyboardInterrupt):
        fit(model, rows, valid, cfg, given=given, checkpoint=Checkpoint(tmp_path, "p", {}), epoch_start=stop)
    model, given = start()
    hist = fit(model, rows, valid, cfg, given=given, checkpoint=Checkpoint(tmp_path, "p", {}))
    assert hist["resumed_from_epoch"] == stop_at
    assert _timeless(hist) == _timeless(whole) and hist.get("averaged") == whole.get("averaged")
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("stop_at", [1, 2, 3, 4, 5])
def test_a_resumed_fit_averages_the_same_epochs_to_the_same_weights(tmp_path, stop_at):
    """Stopped after any epoch and resumed from its checkpoint, the fit trains on from the last epoch's weights (not
    a tied epoch's) and ends with the uninterrupted fit's mean, bit for bit."""
    schema, rows, valid = _data()
    cfg = replace(CFG, lr=0.05)
    model = _model(schema)
    whole = fit(model, rows, valid, cfg)
    want = {k: v.clone() for k, v in model.state_dict().items()}

    def stop(epoch):
        if epoch == stop_at:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit(_model(schema), rows, valid, cfg, checkpoint=Checkpoint(tmp_path, "p", {}), epoch_start=stop)
    model = _model(schema)
    hist = fit(model, rows, valid, cfg, checkpoint=Checkpoint(tmp_path, "p", {}))
    assert hist["resumed_from_epoch"] == stop_at
    assert _timeless(hist) == _timeless(whole) and hist.get("averaged") == whole.get("averaged")
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("damage", ["losses", "weights", "best"])
def test_a_checkpoint_whose_tied_epochs_do_not_fit_is_ignored_and_the_fit_starts_again(tmp_path, damage):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    schema, rows, valid = _data()
    cfg = replace(CFG, lr=0.05, epochs=3)
    model = _model(schema)
    whole = fit(model, rows, valid, cfg)

    def stop(epoch):
        if epoch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit(_model(schema), rows, valid, cfg, checkpoint=Checkpoint(tmp_path, "p", {}), epoch_start=stop)
    path = tmp_path / "p.safetensors"
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:  # the header's metadata (epoch, the JSON's hash) as written
        meta = fh.metadata()
    prefix = {"losses": "valid_losses.tied.", "weights": "tied.", "best": "best."}[damage]
    names = [k for k in tensors if k.startswith(prefix) and tensors[k].dim() >= 1]
    assert names
    tensors[names[0]] = tensors[names[0]][:-1]
    save_file(tensors, str(path), metadata=meta)
    logged = []
    model = _model(schema)
    hist = fit(model, rows, valid, cfg, checkpoint=Checkpoint(tmp_path, "p", {}, logged.append))
    assert "resumed_from_epoch" not in hist and any("ignoring damaged checkpoint" in m for m in logged), logged
    assert _timeless(hist) == _timeless(whole) and hist.get("averaged") == whole.get("averaged")


@pytest.mark.parametrize("flag", [[], ["--no-average-epochs"]])
def test_the_run_records_the_averaged_epochs_and_the_flag_turns_averaging_off(tmp_path, flag):
    import json
    from helpers import cli, write_csv
    data = write_csv(tmp_path, n=800)
    out = tmp_path / "run"
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, "--no-select",
            "--epochs", "4", "--patience", "0", "--lr", "0.01", "--batch-size", "64", "--hidden", "16",
            "--embed-dim", "4", *flag)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    h = json.loads((out / "history.json").read_text())["continue"]
    if flag:
        assert "averaged" not in h and "averaged_epochs" not in m["phases"]["continue"]
        assert "final model" not in r.output
        assert m["valid"]["logloss"] == pytest.approx(h["epochs"][h["best_epoch"] - 1]["valid"]["logloss"], abs=1e-9)
    else:
        assert h["averaged"]["used"] and m["phases"]["continue"]["averaged_epochs"] == h["averaged"]["epochs"]
        assert m["valid"]["logloss"] == pytest.approx(h["averaged"]["valid"]["logloss"], abs=1e-9)
        *most, last = h["averaged"]["epochs"]
        said = ", ".join(f"epoch {e}" for e in most) + f" and epoch {last}"
        assert (f"train (all fields): final model: the mean of {said} (tied in validation logloss), valid auc "
                f"{m['valid']['auc']:.4f}") in " ".join(r.output.split()), r.output


def test_phase_3_counts_its_first_epoch_among_the_averaged_and_inspect_names_them(tmp_path):
    """After the keep rule, phase 3's fit is given the first epoch's model (its epoch 0 in history.json): metrics.json
    counts phase 3's epochs from that first one, and `lightfmp inspect` names the mean."""
    import json
    from helpers import cli, write_csv
    data = write_csv(tmp_path, n=800)
    out = tmp_path / "run"
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, "--subset", "0.5",
            "--pretrain-epochs", "3", "--epochs", "4", "--patience", "0", "--lr", "0.02", "--batch-size", "64",
            "--hidden", "16", "--embed-dim", "4", "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    h = json.loads((out / "history.json").read_text())["continue"]
    assert "first_epoch" in h and h["averaged"]["used"]
    assert m["phases"]["continue"]["averaged_epochs"] == [e + 1 for e in h["averaged"]["epochs"]]
    shown = " ".join(cli("inspect", out).output.split())
    assert (f"final model: the mean of phase 3's epochs {', '.join(str(e + 1) for e in h['averaged']['epochs'])} "
            f"of 4 (tied in validation logloss)") in shown, shown


def test_the_log_line_names_the_start_model_and_a_mean_not_used():
    from lightfmp.training import _final_model
    valid = {"auc": 0.81234}
    assert _final_model({"epochs": [0, 1, 2], "used": True, "valid": valid}) == (
        "final model: the mean of the model it started from, epoch 1 and epoch 2 (tied in validation logloss), "
        "valid auc 0.8123")
    assert _final_model({"epochs": [2, 3], "used": False, "valid": valid}) == (
        "final model: the best epoch (the mean of epoch 2 and epoch 3 was measurably worse in validation logloss)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a fit on a GPU needs one")
def test_on_a_gpu_the_kept_weights_live_in_host_memory_and_a_resume_is_exact(tmp_path, monkeypatch):
    kept = []
    real = training.tie

    def watch(tied, *args):
        out = real(tied, *args)
        kept.extend(v.device.type for w, _ in out.values() for v in w.values())
        return out
    monkeypatch.setattr(training, "tie", watch)
    schema, rows, valid = _data()
    cfg = replace(CFG, lr=0.01, epochs=6)
    model = _model(schema)
    whole = fit(model, rows, valid, cfg, device="cuda")
    want = {k: v.clone() for k, v in model.state_dict().items()}
    assert whole["averaged"]["used"] and kept and set(kept) == {"cpu"}

    def stop(epoch):
        if epoch == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit(_model(schema), rows, valid, cfg, device="cuda", checkpoint=Checkpoint(tmp_path, "p", {}), epoch_start=stop)
    model = _model(schema)
    hist = fit(model, rows, valid, cfg, device="cuda", checkpoint=Checkpoint(tmp_path, "p", {}))
    assert hist.get("averaged") == whole["averaged"]
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
