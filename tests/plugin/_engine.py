"""Helpers for the end-to-end plugin tests: offline runs and an OpenAI API server, each in its
own process group, plus the greedy-token comparison."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.plugin._engine_worker import END, START
from tests.plugin._models import MAX_TOKENS, PROMPTS

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_engine_worker.py")
# One engine in the worker's process, as several runs per process need.
IN_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# Variables that would leak a backend or platform choice from the test process into vLLM's.
_SCRUB = ("TRITON_INTERPRET", "VAT_BACKEND", "VAT_PLATFORM", "VAT_PLUGIN_MUTATE", "VAT_PLUGIN_COUNTS_DIR")
# Logprobs of two candidate tokens closer than this (nats) are a near tie: fp32 rounding
# differences between two correct implementations may flip the greedy choice there.
TIE_TOLERANCE = 1e-3
# Largest accepted difference of a chosen token's logprob while tokens agree.
LOGPROB_TOLERANCE = 1e-3


def engine_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_engine(env: dict[str, str], runs: list[dict], tmp: Path, *, timeout: int = 1200) -> dict[str, dict]:
    """Offline runs (specs as ``_engine_worker.py`` reads them) in one child process with ``env``;
    the results by label, each with its own part of the log under ``"log"``. Several runs need
    the engine in that process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` in ``env``)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=tmp, delete=False) as f:
        json.dump([{**r, "model": str(r["model"])} for r in runs], f)
    spec_file = f.name
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(WORKER), spec_file],
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )
    out = proc.stdout
    results = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line.removeprefix("RESULT "))
            results[result["label"]] = result
    labels = [r["label"] for r in runs]
    assert proc.returncode == 0 and list(results) == labels, (
        f"engine runs {labels} failed (finished: {list(results)}):\n{out[-10000:]}"
    )
    wall = round(time.monotonic() - start, 1)
    for label, result in results.items():
        # The first run's part also holds what the process printed before it (start-up lines).
        part = out if label == labels[0] else out.partition(START + label + "\n")[2]
        result["log"] = part.partition(END + label + "\n")[0]
        result["process_wall_s"] = wall
    return results


def offline_run(
    label: str, model: Path, *, prompts=PROMPTS, max_tokens=MAX_TOKENS, logprobs=5, **spec
) -> dict:
    """One run's spec for :func:`run_engine` (``spec``: ``llm``, ``mutate``, ``probe``)."""
    return {"label": label, "model": str(model), "prompts": prompts, "max_tokens": max_tokens,
            "logprobs": logprobs, **spec}  # fmt: skip


def run_offline(model: Path, env: dict[str, str], tmp: Path, **spec) -> dict:
    """One offline run in a process of its own (the engine spawned as vLLM does by default
    unless ``env`` says otherwise)."""
    return run_engine(env, [offline_run("run", model, **spec)], tmp)["run"]


def compare_greedy(ref: dict, got: dict) -> list[str]:
    """Mismatches between two greedy runs: differing tokens are accepted only at a near tie of
    the reference's top two logprobs (the rest of that sequence is then not compared)."""
    problems = []
    for i, (ref_tokens, got_tokens) in enumerate(zip(ref["tokens"], got["tokens"], strict=True)):
        for step, (a, b) in enumerate(zip(ref_tokens, got_tokens, strict=True)):
            ref_lp = ref["logprobs"][i][step]
            got_lp = got["logprobs"][i][step]
            if a == b:
                diff = abs(ref_lp[str(a)] - got_lp[str(b)])
                if diff > LOGPROB_TOLERANCE:
                    problems.append(f"prompt {i} step {step}: logprob of {a} differs by {diff:.2e}")
                continue
            top = sorted(ref_lp.values(), reverse=True)
            gap = top[0] - top[1] if len(top) > 1 else float("inf")
            if gap > TIE_TOLERANCE or str(b) not in ref_lp:
                problems.append(f"prompt {i} step {step}: token {b} instead of {a} (top-2 gap {gap:.2e})")
            break
    return problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """``python -m vllm.entrypoints.openai.api_server`` on loopback, in its own process group."""

    def __init__(self, model: Path, env: dict[str, str], log_path: Path, *extra_args: str) -> None:
        self.model = str(model)
        self.port = free_port()
        self.log_path = log_path
        args = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--host", "127.0.0.1", "--port", str(self.port),
            "--skip-tokenizer-init", "--dtype", "float32", "--enforce-eager",
            "--max-model-len", "128", "--max-num-batched-tokens", "32", "--max-num-seqs", "4",
            "--gpu-memory-utilization", "0.2", "--seed", "0", *extra_args,
        ]  # fmt: skip
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 500) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.log()[-8000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()[-8000:]}")

    def complete(self, prompt: list[int], max_tokens: int) -> dict:
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "return_token_ids": True,
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return json.loads(r.read())["choices"][0]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"completion failed: {exc.code} {exc.read()[:2000]!r}") from exc

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log.close()
