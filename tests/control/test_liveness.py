"""The lease state machine, driven by a fake clock (no sleeping)."""

import pytest

from atoll.coordinator.liveness import DRAINING, LOST, READY, SUSPECT, Liveness, Transition


def beat_every(lv, node, start, end, step):
    t = start
    changes = []
    while t <= end:
        changes += lv.sweep(t)
        tr = lv.heartbeat(node, t)
        if tr:
            changes.append(tr)
        t += step
    return changes


def test_steady_heartbeats_never_change_state():
    lv = Liveness(1.0)
    lv.track("n", READY, 0.0)
    assert beat_every(lv, "n", 0.0, 100.0, 1.0) == []
    assert lv.state("n") == READY


def test_hiccup_shorter_than_one_interval_changes_nothing():
    lv = Liveness(1.0)
    lv.track("n", READY, 0.0)
    lv.heartbeat("n", 1.0)
    # the next heartbeat, due at 2.0, is delayed by 0.99 s; sweeps keep running meanwhile
    for t in [x / 100 for x in range(100, 299)]:
        assert lv.sweep(t) == []
    assert lv.heartbeat("n", 2.99) is None
    assert lv.state("n") == READY


def test_silent_node_goes_suspect_then_lost_on_time():
    lv = Liveness(1.0)
    lv.track("n", READY, 0.0)
    assert lv.sweep(2.19) == []
    assert lv.sweep(2.21) == [Transition("n", READY, SUSPECT)]
    assert lv.sweep(2.89) == []
    assert lv.sweep(2.91) == [Transition("n", SUSPECT, LOST)]
    assert lv.sweep(100.0) == []


def test_heartbeat_revives_suspect_and_lost_nodes():
    lv = Liveness(2.0)
    lv.track("n", READY, 0.0)
    lv.sweep(5.0)
    assert lv.state("n") == SUSPECT
    assert lv.heartbeat("n", 5.1) == Transition("n", SUSPECT, READY)
    lv.sweep(20.0)
    assert lv.state("n") == LOST
    assert lv.heartbeat("n", 21.0) == Transition("n", LOST, READY)


def test_draining_survives_heartbeats_and_becomes_lost_when_silent():
    lv = Liveness(1.0)
    lv.track("n", READY, 0.0)
    assert lv.set_draining("n", True, 0.5) == Transition("n", READY, DRAINING)
    assert lv.heartbeat("n", 1.0) is None
    assert lv.state("n") == DRAINING
    assert lv.sweep(3.0) == []          # DRAINING is never SUSPECT
    assert lv.sweep(3.95) == [Transition("n", DRAINING, LOST)]


def test_killed_node_lost_within_three_intervals_of_its_kill():
    for interval in (1.0, 5.0):
        lv = Liveness(interval)
        lv.track("n", READY, 0.0)
        sweep_every = interval / 10
        t, lost_at = 0.0, None
        while lost_at is None:
            t += sweep_every
            if lv.sweep(t):
                lost_at = t if lv.state("n") == LOST else None
        assert lost_at <= 3 * interval


def test_bad_arguments():
    with pytest.raises(ValueError):
        Liveness(0)
    with pytest.raises(ValueError):
        Liveness(1.0, suspect_factor=3.0, lost_factor=2.0)
    lv = Liveness(1.0)
    with pytest.raises(ValueError):
        lv.track("n", "ALIVE", 0.0)
