"""node.yaml and settings validation: errors name the source, the field and what is allowed."""

import pytest

from atoll.core.errors import SpecError
from atoll.specs.common import load_yaml
from atoll.specs.config import CoordinatorSettings, check_address, resolve_settings, split_address
from atoll.specs.node import NodeConfig

from .helpers import node_yaml


def test_valid_node_yaml_round_trips(tmp_path):
    p = node_yaml(tmp_path / "n.yaml")
    cfg = load_yaml(NodeConfig, p)
    (tmp_path / "again.yaml").write_text(cfg.to_yaml())
    assert load_yaml(NodeConfig, tmp_path / "again.yaml") == cfg


@pytest.mark.parametrize("override,needle", [
    ({"tier": "cloud"}, "tier"),
    ({"price_per_hour": -2}, "price_per_hour"),
    ({"name": "has space"}, "name"),
    ({"simulated_hardware": {"gpus": [{"name": "X", "memory_gb": -1}]}}, "simulated_hardware.gpus[0].memory_gb"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_node_yaml_names_file_and_field(tmp_path, override, needle):
    p = node_yaml(tmp_path / "n.yaml", **override)
    with pytest.raises(SpecError) as ei:
        load_yaml(NodeConfig, p)
    msg = str(ei.value)
    assert str(p) in msg and needle in msg


def test_unknown_tier_lists_allowed_values(tmp_path):
    p = node_yaml(tmp_path / "n.yaml", tier="cloud")
    with pytest.raises(SpecError) as ei:
        load_yaml(NodeConfig, p)
    assert "datacenter" in str(ei.value) and "edge" in str(ei.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_yaml(NodeConfig, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_yaml(NodeConfig, tmp_path / "bad.yaml")


def test_settings_precedence_flag_env_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("listen: 127.0.0.1:1111\nheartbeat_interval: 7\nstate_dir: /from/file\n")
    env = {"ATOLL_LISTEN": "127.0.0.1:2222", "ATOLL_HEARTBEAT_INTERVAL": "3"}
    s = resolve_settings(CoordinatorSettings, flags={"listen": "127.0.0.1:3333", "heartbeat_interval": None},
                         config_file=str(f), env=env)
    assert s.listen == "127.0.0.1:3333"          # flag beats env
    assert s.heartbeat_interval == 3.0           # env beats file
    assert s.state_dir == "/from/file"           # file beats default
    assert s.metrics_listen == "127.0.0.1:9090"  # default
    assert (s.join_burst, s.join_rate, s.max_nodes) == (100, 2.0, 20_000)
    s = resolve_settings(CoordinatorSettings, flags={}, config_file=None,
                         env={"ATOLL_JOIN_BURST": "5000", "ATOLL_JOIN_RATE": "0.5", "ATOLL_MAX_NODES": "30"})
    assert (s.join_burst, s.join_rate, s.max_nodes) == (5000, 0.5, 30)


def test_settings_errors_name_their_origin(tmp_path):
    with pytest.raises(SpecError, match="environment ATOLL_HEARTBEAT_INTERVAL"):
        resolve_settings(CoordinatorSettings, flags={}, config_file=None, env={"ATOLL_HEARTBEAT_INTERVAL": "-1"})
    with pytest.raises(SpecError, match="flag --listen"):
        resolve_settings(CoordinatorSettings, flags={"listen": "nohost"}, config_file=None, env={})


@pytest.mark.parametrize("addr", ["127.0.0.1:7070", "[::1]:80", "localhost:1", ":9090"])
def test_good_addresses(addr):
    assert check_address(addr) == addr


@pytest.mark.parametrize("addr", ["127.0.0.1", "host:99999", "a b:1", "", "http://x:1"])
def test_bad_addresses(addr):
    with pytest.raises(ValueError):
        check_address(addr)


def test_split_address():
    assert split_address("[::1]:80") == ("::1", 80)
    assert split_address(":9090") == ("0.0.0.0", 9090)
