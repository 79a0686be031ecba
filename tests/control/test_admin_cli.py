"""`atoll keys` and `atoll tokens` end to end: the CLI as a user runs it, against a real
coordinator process (create prints the secret once, list as a table and as JSON, revoke)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from atoll.client import Client

from .helpers import Proc, env, free_port, wait_for


def atoll(*args: str, key: str | None = None) -> subprocess.CompletedProcess:
    e = env()
    e.pop("ATOLL_API_KEY", None)
    if key:
        e["ATOLL_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "atoll", *args], capture_output=True, text=True, timeout=60, env=e)


def ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    return out.stdout


@pytest.fixture
def coordinator(tmp_path):
    addr = f"127.0.0.1:{free_port()}"
    p = Proc(["coordinator", "--listen", addr, "--metrics-listen", f"127.0.0.1:{free_port()}",
              "--state-dir", str(tmp_path / "s"), "--join-token", "admin-cli-test-token"], tmp_path / "c.log")

    def up():
        with Client(addr, timeout=2) as c:
            return c.nodes() is not None
    wait_for(up, 30, what="coordinator answering")
    yield addr
    p.stop()


def test_keys_create_list_revoke(coordinator):
    c = ("--coordinator", coordinator)
    lines = ok(atoll("keys", "create", "--tenant", "ops", "--role", "admin", *c)).splitlines()
    assert lines[0].startswith("created key ") and "for tenant ops (admin); it is shown only once:" in lines[0]
    admin = lines[1]
    assert admin.startswith("atoll_") and len(lines) == 2

    user = ok(atoll("keys", "create", "--tenant", "team-a", *c, key=admin)).splitlines()[1]
    user_id = user.split("_")[1]
    keys = json.loads(ok(atoll("keys", "list", "-o", "json", *c, key=admin)))
    assert sorted((k["tenant"], k["role"], k["revoked"]) for k in keys) == [("ops", "admin", False),
                                                                           ("team-a", "user", False)]
    assert all(admin not in json.dumps(k) and user not in json.dumps(k) for k in keys)   # never the secrets

    assert ok(atoll("keys", "revoke", user_id, *c, key=admin)).strip() == f"key {user_id} (team-a) revoked"
    table = ok(atoll("keys", "list", *c, key=admin)).splitlines()
    assert table[0].split() == ["ID", "TENANT", "ROLE", "REVOKED"]
    assert [r.split() for r in table[2:] if r.split()[0] == user_id] == [[user_id, "team-a", "user", "yes"]]

    refused = atoll("keys", "list", *c, key=user)                      # a revoked key is refused, in one line
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    no_action = atoll("keys", key=admin)
    assert no_action.returncode == 2 and "atoll keys create | list | revoke" in no_action.stderr

    # the last admin key cannot be revoked: with no live key left the fleet would open to anyone
    admin_id = admin.split("_")[1]
    last = atoll("keys", "revoke", admin_id, *c, key=admin)
    assert last.returncode == 2 and "last admin key" in last.stderr, (last.stdout, last.stderr)
    with Client(coordinator) as anonymous:
        with pytest.raises(Exception, match="API key"):
            anonymous.workflows()
    second = ok(atoll("keys", "create", "--tenant", "ops", "--role", "admin", *c, key=admin)).splitlines()[1]
    assert ok(atoll("keys", "revoke", admin_id, *c, key=second)).strip() == f"key {admin_id} (ops) revoked"


def test_tokens_create_list_revoke(coordinator):
    c = ("--coordinator", coordinator)
    admin = ok(atoll("keys", "create", "--tenant", "ops", "--role", "admin", *c)).splitlines()[1]
    lines = ok(atoll("tokens", "create", "--tier", "renter", "--region", "us-west", "--ttl", "2h", "--uses", "3",
                     *c, key=admin)).splitlines()
    assert lines[0].startswith("created join token ") and "(renter in us-west); it is shown only once:" in lines[0]
    assert lines[1].startswith("atj_")
    tid = lines[0].split()[3]
    ok(atoll("tokens", "create", "--trusted", *c, key=admin))

    tokens = {t["id"]: t for t in json.loads(ok(atoll("tokens", "list", "-o", "json", *c, key=admin)))}
    assert len(tokens) == 2 and tokens[tid]["tiers"] == ["renter"] and tokens[tid]["uses_left"] == 3
    assert all(lines[1] not in json.dumps(t) for t in tokens.values())

    table = ok(atoll("tokens", "list", *c, key=admin)).splitlines()
    assert table[0].split() == ["ID", "SCOPE", "EXPIRES", "USES", "LEFT", "REVOKED"]
    rows = {r.split()[0]: r for r in table[2:]}                       # under the header and its rule
    assert "renter in us-west" in rows[tid] and "in 2.0 h" in rows[tid] and rows[tid].split()[-2:] == ["3", "no"]
    other = next(i for i in rows if i != tid)
    assert "any tier in any region, trusted" in rows[other] and "never" in rows[other] and "unlimited" in rows[other]

    assert ok(atoll("tokens", "revoke", tid, *c, key=admin)).strip() == f"join token {tid} revoked"
    assert {t["id"]: t["revoked"] for t in json.loads(ok(atoll("tokens", "list", "-o", "json", *c, key=admin)))} \
        == {tid: True, other: False}


def test_what_others_sent_is_printed_with_its_control_characters_escaped(capsys):
    """Node names, regions, labels and messages come from hosts; a raw ESC sequence in one
    retitled and erased lines of the operator's terminal. The CLI writes control characters as
    escapes, in tables and in every line it prints."""
    from atoll.cli.main import main
    from atoll.cli.table import printable, render

    evil = "dc-1\x1b]0;owned\x07\x1b[1A\x1b[2K"
    table = render(["NODE", "REGION"], [[evil, "eu\x9bwest"]])
    assert "\x1b" not in table and "\x07" not in table and "\x9b" not in table
    assert "dc-1\\x1b]0;owned\\x07" in table and printable("plain é 名前") == "plain é 名前"
    # the whole command's output: here an error whose message a coordinator chose
    code = main(["nodes", "--coordinator", "127.0.0.1:1\x1b[2J"])
    out = capsys.readouterr()
    assert code == 2 and "\x1b" not in out.err + out.out and "\\x1b[2J" in out.err, out
