"""An agent's --metrics-listen serves the runtime's metrics and its replicas by state; its
--openai-listen serves the host's own model to an edge client, with no coordinator on the path."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request

import pytest
import yaml

from atoll.client import Client
from tests.control.helpers import Proc, free_port, node_yaml, wait_for

pytestmark = pytest.mark.integration


def test_agent_metrics_endpoint(tmp_path):
    from tests.fixtures.tiny_models import build_tiny_llama, with_chat_template

    with_chat_template(build_tiny_llama(tmp_path / "base"))
    addr, mport, oport = f"127.0.0.1:{free_port()}", free_port(), free_port()
    procs = [Proc(["coordinator", "--listen", addr, "--metrics-listen", f"127.0.0.1:{free_port()}", "--state-dir",
                   str(tmp_path / "s"), "--heartbeat-interval", "1", "--join-token", "metrics-token"], tmp_path / "c.log"),
             Proc(["agent", "--coordinator", addr, "--config", str(node_yaml(tmp_path / "n.yaml", name="m-1",
                   labels={"hardware": "a100"})), "--state-dir", str(tmp_path / "a"), "--join-token", "metrics-token",
                   "--metrics-listen", f"127.0.0.1:{mport}", "--openai-listen", f"127.0.0.1:{oport}"],
                  tmp_path / "a.log")]
    try:
        spec = {"name": "wf-m", "sources": [{"name": "u", "rate": 1, "region": "us-east", "tier": "datacenter"}],
                "tasks": [{"name": "t", "max_tokens": 4, "variants": [
                    {"name": "v", "model": str(tmp_path / "base"), "accuracy": 0.9, "throughput": {"a100": 5}}]}],
                "edges": [{"from": "u", "to": "t"}]}
        (tmp_path / "wf.yaml").write_text(yaml.safe_dump(spec))
        with Client(addr) as c:
            wait_for(lambda: [n.state for n in c.nodes()] == ["READY"], 30)
            c.submit(str(tmp_path / "wf.yaml"))
            c.wait_ready("wf-m", 60)
            for i in range(3):
                c.invoke("wf-m", {"text": f"hello {i}"})
            # the coordinator collects the agent's telemetry from its heartbeats
            wait_for(lambda: c.nodes()[0].status["ttft_seconds"] > 0, 10)
            st = c.nodes()[0].status
            assert 0 < st["ttft_seconds"] < 30 and 0 <= st["kv_cache_usage"] <= 1
            assert st["loaded"] and st["loaded"][0]["base_model"] == str(tmp_path / "base")
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert re.search(r'^atoll_agent_replicas\{state="ready"\} 1\.0$', text, re.M), text[:500]
        m = re.search(r"^atoll_time_to_first_token_seconds_count (\S+)$", text, re.M)
        assert m and float(m.group(1)) >= 3
        assert re.search(r"^atoll_generated_tokens_total (\S+)$", text, re.M)
        if shutil.which("promtool") is None:
            pytest.fail("promtool is needed (scripts/system-deps installs Debian's prometheus)")
        chk = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert chk.returncode == 0, chk.stdout + chk.stderr

        import openai
        oa = openai.OpenAI(base_url=f"http://127.0.0.1:{oport}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in oa.models.list().data] == ["wf-m", "base"]      # workflows, then base models
        r = oa.completions.create(model="base", prompt="edge hello", max_tokens=3)
        assert isinstance(r.choices[0].text, str)
        assert 1 <= r.usage.completion_tokens <= 3 and r.usage.prompt_tokens >= 1      # the agent door counts
        chunks = list(oa.chat.completions.create(model="base", stream=True, max_tokens=3,
                                                 messages=[{"role": "user", "content": "hi"}]))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.NotFoundError):
            oa.completions.create(model="base:nope", prompt="x")
    finally:
        for p in procs:
            p.stop()
