"""Pure parts of failover: address lists, the standby's hint, and the agent's rotation."""

from __future__ import annotations

import random

import pytest

from atoll.agent.heartbeat import HeartbeatClient
from atoll.core.errors import InvalidArgument
from atoll.specs.config import AgentSettings, check_addresses, leader_from_refusal, split_addresses


def test_address_lists():
    assert check_addresses("127.0.0.1:7070") == "127.0.0.1:7070"
    assert split_addresses("a:1, b:2,[::1]:3") == ["a:1", "b:2", "[::1]:3"]
    for bad in ("a:1,", "a:1,,b:2", "a:1,b", "a:1;b:2"):
        with pytest.raises(ValueError):
            check_addresses(bad)
    assert AgentSettings(config="n.yaml", coordinator="a:1,b:2").coordinator == "a:1,b:2"


def test_client_takes_a_list_and_rejects_a_bad_one():
    from atoll.client import Client

    with Client("127.0.0.1:1,127.0.0.1:2") as c:
        assert c.addresses == ["127.0.0.1:1", "127.0.0.1:2"]
    with pytest.raises(InvalidArgument, match="coordinator address"):
        Client("127.0.0.1:1,nope")


def test_leader_hint():
    assert leader_from_refusal("UNAVAILABLE: standby; leader is at 10.0.0.2:7070") == "10.0.0.2:7070"
    assert leader_from_refusal("standby; leader is at unknown (election under way)") == "unknown"
    assert leader_from_refusal("failed to connect to all addresses") is None


class _Chan:
    """Enough of a grpc.aio.Channel for a stub to be built on it."""

    def __getattr__(self, name):
        return lambda *a, **k: None


def _client(n: int) -> HeartbeatClient:
    chans = [_Chan() for _ in range(n)]
    return HeartbeatClient(chans if n > 1 else chans[0], addresses=[f"h{i}:1" for i in range(n)],
                           join_token="t", spec={"name": "x"}, capacity={}, rng=random.Random(1))


def test_agent_rotates_and_backs_off_once_per_round():
    hb = _client(3)
    delays, order = [], []
    for _ in range(6):
        hb.last_error = "UNAVAILABLE: failed to connect"
        delays.append(hb._next_coordinator())
        order.append(hb._current)
    assert order == [1, 2, 0, 1, 2, 0]
    short = [d for i, d in enumerate(delays) if i % 3 != 2]
    assert all(0.05 <= d <= 0.15 for d in short)
    assert hb.backoff.attempt == 2                 # two full rounds, two back-off steps
    assert hb.channel is hb.channels[0] and hb.stub is hb._stubs[0]


def test_agent_follows_the_standby_hint():
    hb = _client(3)
    hb.last_error = "UNAVAILABLE: standby; leader is at h2:1"
    hb._next_coordinator()
    assert hb._current == 2
    hb.last_error = "UNAVAILABLE: standby; leader is at elsewhere:9"     # not ours: just the next one
    hb._next_coordinator()
    assert hb._current == 0


def test_one_coordinator_keeps_the_plain_backoff():
    hb = _client(1)
    hb.last_error = "UNAVAILABLE: standby; leader is at h0:1"
    d = [hb._next_coordinator() for _ in range(4)]
    assert hb._current == 0 and hb.backoff.attempt == 4
    assert d[3] >= 0.8                               # 0.2 * 2**3 / 2 at least
