"""The Python API in a process that does other things: what a run takes of torch's process-wide state (its random
generator, grad mode, default dtype, thread count) and what it gives back."""
import threading

import pytest
import torch

from helpers import write_csv
from lightfmp import LightFMPError, RunConfig, open_run, run
from lightfmp.io import file_sha256


def _cfg(tmp_path, seed=0):
    csv = write_csv(tmp_path, n=600)
    return RunConfig.of(data=str(csv), label="label", categorical="a,b,noise", numeric="x", multi_hot="tags:|",
                        pretrain_epochs=2, epochs=2, embed_dim=4, hidden=[8], dropout=0.3, seed=seed)


def _weights(path):
    return file_sha256(path / "model.safetensors")


def test_runs_started_in_threads_give_what_each_gives_alone(tmp_path):
    """Each run seeds torch's one generator (initialisation, batch order, dropout): two in threads of one process
    used to draw from each other's stream and give other weights, silently. They take turns now."""
    a, b = _cfg(tmp_path, 1), _cfg(tmp_path, 2)
    run(a, tmp_path / "a_alone", quiet=True)
    run(b, tmp_path / "b_alone", quiet=True)
    errors = []

    def go(cfg, out):
        try:
            run(cfg, out, quiet=True)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=go, args=(cfg, tmp_path / name)) for cfg, name in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _weights(tmp_path / "a") == _weights(tmp_path / "a_alone")
    assert _weights(tmp_path / "b") == _weights(tmp_path / "b_alone")


def test_a_run_gives_back_the_callers_generator_and_trains_under_no_grad(tmp_path):
    cfg = _cfg(tmp_path)
    run(cfg, tmp_path / "plain", quiet=True)
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    with torch.no_grad():
        run(cfg, tmp_path / "no_grad", quiet=True)
    assert torch.equal(torch.rand(3), want)  # the caller's stream goes on where it was
    with torch.inference_mode():
        run(cfg, tmp_path / "inference", quiet=True)
    assert _weights(tmp_path / "no_grad") == _weights(tmp_path / "inference") == _weights(tmp_path / "plain")


def test_another_default_dtype_is_refused_in_one_line(tmp_path):
    cfg = _cfg(tmp_path)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with pytest.raises(LightFMPError, match="default dtype is torch.float64 .* set it back to torch.float32"):
            run(cfg, tmp_path / "r", quiet=True)
    finally:
        torch.set_default_dtype(before)
    assert not (tmp_path / "r").exists()


def test_the_finished_model_scores_in_eval_mode_and_profiling_gives_back_the_thread_count(tmp_path):
    from lightfmp.export import export_run
    from lightfmp.profiling import Budget, profile
    cfg = _cfg(tmp_path)
    run(cfg, tmp_path / "r", quiet=True)
    model, schema = open_run(tmp_path / "r").load_final()
    assert not model.training
    ids = torch.ones(4, schema.num_slots, dtype=torch.int64) * 2
    assert torch.equal(model(ids), model(ids))  # dropout 0.3 would draw other masks in training mode
    export_run(tmp_path / "r", tmp_path / "e")
    torch.set_num_threads(2)
    profile([tmp_path / "e"], batch_sizes=[1], threads=1, budget=Budget(warmup=1, min_runs=2, max_runs=3, max_seconds=0.05))
    assert torch.get_num_threads() == 2


def test_a_child_forked_while_another_thread_trains_can_train():
    """A process forked (multiprocessing's default on Linux) while another thread held the training lock would
    inherit it held, and every run in the child would wait for ever."""
    import os
    from lightfmp import pipeline
    held, release = threading.Event(), threading.Event()

    def hold():
        with pipeline._TRAINING:
            held.set()
            release.wait(10)
    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the lock is free here
            os._exit(0 if pipeline._TRAINING.acquire(timeout=2) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    finally:
        release.set()
        t.join()


def test_an_interrupted_first_run_leaves_torchs_lazy_imports_importable_again():
    """Ctrl-C while the first optimizer imports torch._dynamo (~900 modules, seconds): the modules that import added
    are taken out again, so the next run imports them afresh (before: every later run failed inside torch, on a
    half-initialised sympy). Simulated in a fresh interpreter: an import deep in that chain raises KeyboardInterrupt
    once."""
    import subprocess
    import sys
    code = """
import sys
from lightfmp.training import warm_up

class Once:
    fired = False
    def find_spec(self, name, path=None, target=None):
        if name == "sympy.printing" and not Once.fired:
            Once.fired = True
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Once())
try:
    warm_up()
except KeyboardInterrupt:
    print("interrupted")
warm_up()
import torch
m = torch.nn.Linear(2, 1)
torch.optim.Adam(m.parameters()).step()
print("fine", Once.fired)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["interrupted", "fine", "True"], r.stderr[-2000:]
