"""lightfmp/distributed.py: decisions a mutation audit found no other test pinned. In one process: the torchrun
environment is set through monkeypatch, and no process group is ever joined."""
from datetime import timedelta

import pytest
import torch

from lightfmp import distributed as dist_mod
from lightfmp.errors import LightFMPError


@pytest.fixture
def torchrun_env(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", dist_mod.TIMEOUT_ENV,
                dist_mod.FAULT_ENV):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_the_collective_timeout_is_1800_s_and_must_be_positive(torchrun_env):
    assert dist_mod._timeout() == timedelta(seconds=1800)
    torchrun_env.setenv(dist_mod.TIMEOUT_ENV, "5")
    assert dist_mod._timeout() == timedelta(seconds=5)
    for bad in ("0", "-3"):
        torchrun_env.setenv(dist_mod.TIMEOUT_ENV, bad)
        with pytest.raises(LightFMPError, match=rf"^\$LIGHTFMP_DIST_TIMEOUT={bad}: must be a positive number"):
            dist_mod._timeout()


def test_each_rank_trains_on_its_local_gpu_not_its_global_rank(torchrun_env):
    """Node 2 of two 2-GPU nodes: global rank 3 is cuda:1 there (docs/distributed.md: cuda:LOCAL_RANK)."""
    for var, value in (("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1")):
        torchrun_env.setenv(var, value)
    assert dist_mod.local_device("cuda") == "cuda:1"
    assert dist_mod.local_device("cpu") == "cpu"


def test_a_launch_without_master_port_is_refused_before_joining(torchrun_env):
    def joined(*a, **k):
        raise AssertionError("init_process_group called")
    torchrun_env.setattr(dist_mod.dist, "init_process_group", joined)
    for var, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        torchrun_env.setenv(var, value)
    with pytest.raises(LightFMPError, match=r"^WORLD_SIZE=2 but \$MASTER_PORT is not set: launch with torchrun$"):
        dist_mod.init("cpu")


@pytest.mark.parametrize("text", ["[../gloo/transport/tcp/pair.cc:534] Read error: timed out",
                                  "Socket Timeout", "wait: timeout after 1800000ms"])
def test_a_collective_that_timed_out_is_a_lost_peer(text):
    assert dist_mod.is_comm_error(RuntimeError(text))


def test_an_error_that_only_mentions_a_timeout_is_not_a_lost_peer():
    """Only a RuntimeError (what torch.distributed raises) is read for those words: a user's ValueError about a
    timeout is their own error, not 'lost contact with another rank'."""
    assert not dist_mod.is_comm_error(ValueError("--timeout 0: must be positive; gloo"))
    assert not dist_mod.is_comm_error(RuntimeError("CUDA out of memory"))


def test_a_long_lost_peer_message_is_cut_to_one_short_line(torchrun_env):
    line = dist_mod.failure_message(RuntimeError("gloo connection closed by peer\n" + "x " * 200))
    detail = line.split("(RuntimeError: ", 1)[1].split(");", 1)[0]
    assert "\n" not in line and len(detail) == 160 and detail.endswith("...")


def test_the_fault_hook_fires_at_its_epoch_only(torchrun_env, capsys):
    """A rerun that resumes after the epoch the hook named must not die again at every later epoch."""
    class Exited(Exception):
        pass

    def exit_(code):
        raise Exited(code)
    torchrun_env.setattr(dist_mod.os, "_exit", exit_)
    torchrun_env.setenv(dist_mod.FAULT_ENV, "0:1")
    dist_mod.maybe_fault(0)
    dist_mod.maybe_fault(2)
    with pytest.raises(Exited):
        dist_mod.maybe_fault(1)
    assert "exiting at the start of epoch 1 (testing hook)" in capsys.readouterr().err


def test_the_mean_over_ranks_divides_the_sum_by_the_world_size(torchrun_env):
    """Played as two ranks holding the same tensor: the all-reduce sums to twice it, the mean gives it back."""
    torchrun_env.setattr(dist_mod, "active", lambda: True)
    torchrun_env.setattr(dist_mod, "world", lambda: 2)
    torchrun_env.setitem(dist_mod._state, "backend", "gloo")
    torchrun_env.setattr(dist_mod.dist, "all_reduce", lambda t, op=None, group=None: t.mul_(2))
    t = torch.tensor([1.0, 3.0])
    assert dist_mod.all_reduce_mean(t) is t and t.tolist() == [1.0, 3.0]


def test_a_rank_that_lost_another_prints_its_resume_line_even_as_torchrun_stops_it(torchrun_env):
    """torchrun sends SIGTERM to the ranks left once one dies; where it lands while the rank prints its last line,
    the line is still printed and the rank exits 1 (seen in a loaded CI run: the signal, raised inside that print,
    cut it). Mutant: the print without SIGTERM ignored (`Stopped` escapes instead of the exit)."""
    import os
    import signal

    import typer

    from lightfmp.cli import common
    for var, value in (("WORLD_SIZE", "2"), ("RANK", "0")):
        torchrun_env.setenv(var, value)
    printed = []

    def print_(line, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's stop, arriving mid-print
        printed.append(line)
    torchrun_env.setattr(common.err, "print", print_)

    @common.ranked
    def train():
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:534] Read error: timed out")
    before = signal.signal(signal.SIGTERM, dist_mod._on_sigterm)  # as `init` installs it
    try:
        with pytest.raises(typer.Exit) as raised:
            train()
    finally:
        signal.signal(signal.SIGTERM, before)
    assert raised.value.exit_code == 1
    assert len(printed) == 1 and printed[0].startswith("lightfmp: rank 0: lost contact with another rank")
    assert signal.getsignal(signal.SIGTERM) is before
