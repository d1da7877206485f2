"""Serving the winner over HTTP as users do, each server started on 127.0.0.1 with a free
port and stopped whatever happens, queried with plain clients (tiny model):

- ``mlflow models serve -m models:/<name>@best --env-manager local``: a POST of questions to
  ``/invocations`` (the registered pyfunc's signature);
- ``mlx_lm.server --model <sweep-export's folder>``: an OpenAI-style ``/v1/chat/completions``
  request, with ``urllib`` and with the ``openai`` client.

Both answer what ``sweep-chat`` answers, greedy, to the same question."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import pytest

import harness
from conftest import ROOT
from servers import free_port

pytestmark = pytest.mark.slow
QUESTIONS = ["What does Article 21 protect?", "Which article abolishes untouchability?"]
TOKENS = 24


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A one-trial sweep on the tiny model, trained enough to answer with words, registered
    as ``sweep-s@best`` (answers of ``TOKENS`` tokens), and exported without a GGUF."""
    tmp = tmp_path_factory.mktemp("serve")
    out = harness.run(harness.worded_sweep(tmp, f"eval.max_tokens={TOKENS}"), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    export = subprocess.run(
        [sys.executable, "-m", "sweep.cli.export", "model=tiny", f"target={tmp}/sweep",
         f"output={tmp}/export", f"mlflow.tracking_uri=sqlite:///{tmp}/m.db",
         "export.gguf=false"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    return tmp


def chat_answers(tmp: Path) -> List[str]:
    """``sweep-chat``'s greedy answers, one command per question."""
    out = []
    for question in QUESTIONS:
        done = subprocess.run(
            [sys.executable, "-m", "sweep.cli.chat", "model=tiny", f"target={tmp}/sweep",
             f"prompt={question}", f"chat.max_tokens={TOKENS}"], cwd=tmp, capture_output=True,
            text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        out.append(done.stdout[:-1])  # stdout: the answer and a newline
    assert all(a.strip() for a in out), out
    return out


@contextmanager
def server(cmd: List[str], port: int, ready: str, log: Path, env=None) -> Iterator[str]:
    """Start ``cmd``, wait until ``GET ready`` answers 200, yield the base URL; stop it."""
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{cmd[:4]} exited {proc.returncode}: "
                                     f"{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + ready, timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"not up after 180 s: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as r:
        return json.loads(r.read())


def test_mlflow_models_serve_answers_as_sweep_chat(served) -> None:
    tmp = served
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # mlflow runs uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/m.db",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/sweep-s@best",
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with server(cmd, port, "/ping", tmp / "mlflow-serve.log", env=env) as base:
        reply = post(base + "/invocations", {"inputs": QUESTIONS})
    assert reply["predictions"] == chat_answers(tmp)


def test_mlx_lm_server_answers_as_sweep_chat(served) -> None:
    tmp = served
    port = free_port()
    cmd = [sys.executable, "-m", "mlx_lm", "server", "--model", str(tmp / "export"),
           "--host", "127.0.0.1", "--port", str(port)]
    expected = chat_answers(tmp)
    with server(cmd, port, "/health", tmp / "mlx-server.log") as base:
        got = []
        for question in QUESTIONS:
            reply = post(base + "/v1/chat/completions", {
                "model": str(tmp / "export"), "temperature": 0.0, "max_tokens": TOKENS,
                "messages": [{"role": "user", "content": question}]})
            got.append(reply["choices"][0]["message"]["content"])
        from openai import OpenAI  # the client most applications use

        client = OpenAI(base_url=base + "/v1", api_key="not-needed")
        reply = client.chat.completions.create(
            model=str(tmp / "export"), temperature=0.0, max_tokens=TOKENS,
            messages=[{"role": "user", "content": QUESTIONS[0]}])
    assert got == expected
    assert reply.choices[0].message.content == expected[0]
