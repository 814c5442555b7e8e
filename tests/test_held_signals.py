"""HeldSignals: SIGINT / SIGTERM recorded during the held block, the first acted on at its end, in the handlers
that were there before."""
import signal
import threading

import pytest

from lightfmp.held_signals import HeldSignals


@pytest.fixture
def recorded():
    """SIGINT and SIGTERM handlers that record what they get (restored afterwards)."""
    got = []
    handler = lambda signum, frame: got.append(signum)  # noqa: E731
    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    yield got, handler
    for s, h in before.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_the_block_waits_for_its_end_and_goes_to_the_handler_before(recorded, sig):
    got, handler = recorded
    with HeldSignals() as held:
        held.start()
        signal.raise_signal(sig)
        assert got == []  # held
    assert got == [sig]
    assert signal.getsignal(signal.SIGINT) is handler and signal.getsignal(signal.SIGTERM) is handler


def test_the_first_of_two_signals_is_the_one_acted_on(recorded):
    got, _ = recorded
    with HeldSignals() as held:
        held.start()
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
    assert got == [signal.SIGTERM]


def test_a_block_ending_in_an_error_raises_its_error_not_the_signal(recorded):
    got, handler = recorded
    with pytest.raises(OSError, match="disk full"):
        with HeldSignals() as held:
            held.start()
            signal.raise_signal(signal.SIGINT)
            raise OSError("disk full")
    assert got == [] and signal.getsignal(signal.SIGINT) is handler


def test_before_start_nothing_is_held(recorded):
    got, _ = recorded
    with HeldSignals():
        signal.raise_signal(signal.SIGTERM)
        assert got == [signal.SIGTERM]


def test_off_the_main_thread_it_holds_nothing_and_does_not_fail(recorded):
    _, handler = recorded
    errors = []

    def work():
        try:
            with HeldSignals() as held:
                held.start()
        except Exception as e:  # signal.signal off the main thread raises ValueError
            errors.append(e)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert errors == [] and signal.getsignal(signal.SIGINT) is handler
