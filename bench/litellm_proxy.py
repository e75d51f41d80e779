"""LiteLLM's proxy as a peer for latency: installed into its own venv, pointed at our simulator.

``litellm_proxy(sim_url)`` yields the proxy's base URL and key, or raises ``PeerUnavailable`` with a
line saying why (no package, the proxy would not start). ``LITELLM_LOCAL_MODEL_COST_MAP`` keeps it
off the internet.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llm_router.testing.worker_procs import terminate

PEER_VENV = Path("/tmp/litellm-venv")
KEY = "sk-bench-proxy-0123456789abcdef"


class PeerUnavailable(RuntimeError):
    """LiteLLM's proxy cannot be installed or started here."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_installed() -> Path:
    python = PEER_VENV / "bin" / "python"
    probe = [str(python), "-c", "import litellm.proxy.proxy_server"]
    if python.exists() and subprocess.run(probe, capture_output=True, timeout=120).returncode == 0:
        return PEER_VENV / "bin" / "litellm"
    if not python.exists():
        venv = [shutil.which("python3") or "python3", "-m", "venv", str(PEER_VENV)]
        subprocess.run(venv, check=True, timeout=120)
    pip = [str(python), "-m", "pip", "install", "-q", "litellm[proxy]"]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise PeerUnavailable(f"pip install litellm[proxy] failed: {done.stderr.strip().splitlines()[-1:]}")
    return PEER_VENV / "bin" / "litellm"


@contextmanager
def litellm_proxy(sim_url: str, model: str = "gpt-4o-mini") -> Iterator[tuple[str, str]]:
    """Run LiteLLM's proxy (one process, default settings) with one model on the simulator."""
    try:
        exe = _ensure_installed()
    except (subprocess.SubprocessError, OSError) as exc:
        raise PeerUnavailable(f"LiteLLM could not be installed: {exc!r}") from None
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {model}\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: {sim_url}/v1\n"
            "      api_key: sk-sim-openai\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
        )
        env = {
            **os.environ,
            "LITELLM_MASTER_KEY": KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
        }
        env.pop("PYTHONPATH", None)
        log = Path(tmp) / "proxy.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(exe), "--config", str(config), "--port", str(port), "--host", "127.0.0.1"],
                env=env,
                stdout=out,
                stderr=out,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                    raise PeerUnavailable(f"LiteLLM's proxy exited: {tail}")
                try:
                    with urllib.request.urlopen(f"{url}/health/liveliness", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise PeerUnavailable("LiteLLM's proxy did not answer within 90 s")
                time.sleep(0.2)
            yield url, KEY
        finally:
            terminate(proc, 15)
