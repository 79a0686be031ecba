"""``atoll generate`` from the shell."""

from __future__ import annotations

import subprocess

from tests.fixtures.tiny_models import build_tiny_adapter


def test_generate_cli(atoll_bin, tiny_dir, tmp_path):
    ad = build_tiny_adapter(tmp_path / "ad", tiny_dir, rank=4)
    cmd = atoll_bin + ["generate", "--model", str(tiny_dir), "--adapter", f"tenant-a={ad}", "--prompt",
                       "the cat sat", "--use-adapter", "tenant-a", "--max-tokens", "5", "--ignore-eos"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "5 tokens" in r.stderr and "adapter: tenant-a" in r.stderr

    r = subprocess.run(atoll_bin + ["generate", "--model", str(tiny_dir), "--prompt", "x", "--use-adapter", "b"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--use-adapter" in r.stderr and "Traceback" not in r.stderr
    bad = build_tiny_adapter(tmp_path / "bad", tiny_dir, rank=4, extra_config={"modules_to_save": ["lm_head"]})
    r = subprocess.run(atoll_bin + ["generate", "--model", str(tiny_dir), "--adapter", f"b={bad}", "--prompt", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "modules_to_save" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_generate_cli_chat_on_gguf(atoll_bin):
    """The real SmolLM2 GGUF file, the prompt through its chat template: a real answer."""
    from .smollm2 import smollm2_gguf

    r = subprocess.run(atoll_bin + ["generate", "--model", str(smollm2_gguf()), "--chat", "--prompt",
                                    "What is the capital of France?", "--max-tokens", "24"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "finish: stop" in r.stderr
