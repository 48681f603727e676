"""Secrets and output hygiene (issue 18, part 4): with ``OPENAI_API_KEY`` and a config's
``api_key_env`` set to known canaries, and a server that echoes the Authorization header back
in error bodies, nothing a run, a bench or the annotation app writes (stores, caches, logs,
exports, reports, plots, timings) and no console output of any command holds either canary.
Annotator tokens are secrets too: only their digests are stored, and only `--add-annotator`
prints one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers.fake_openai import FakeOpenAIServer  # noqa: E402
from test_live_server import LiveScript, write_prompts  # noqa: E402

CLI = [sys.executable, "-m", "activepref"]
DEFAULT_KEY = "sk-canary-DEFAULT-5f1e2d3c4b5a69788796"  # OPENAI_API_KEY: gen-a uses the default variable
NAMED_KEY = "sk-canary-NAMED-0a1b2c3d4e5f60718293"  # JUDGE_AND_GEN_B_KEY: gen-b and the judge name it
ENV = {"OPENAI_API_KEY": DEFAULT_KEY, "JUDGE_AND_GEN_B_KEY": NAMED_KEY, "PYTHONUNBUFFERED": "1"}


def activepref(*args, check=True):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env={**os.environ, **ENV}, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def leaks(root: Path, outputs: list[str], needles: list[str]) -> list[str]:
    """Every file under root and every output that holds a needle (or its last 12 characters)."""
    found = []
    forms = [n.encode() for n in needles] + [n[-12:].encode() for n in needles]
    for path in root.rglob("*"):
        if path.is_file() and any(f in path.read_bytes() for f in forms):
            found.append(str(path))
    for k, text in enumerate(outputs):
        if any(f.decode() in text for f in forms):
            found.append(f"output #{k}: {text[:200]!r}")
    return found


def test_no_canary_in_anything_a_run_a_bench_or_the_annotation_app_writes(tmp_path):
    outputs: list[str] = []
    script = LiveScript(faults=True)
    with FakeOpenAIServer(script) as srv:
        prompts = write_prompts(tmp_path / "prompts.jsonl", [
            "[auth401] Name a mammal that lays eggs.",  # gen-a: a 401 that echoes the Authorization header
            "[jecho] Describe a rainbow in one sentence.",  # the judge: a 500 that echoes it
            "[g500] Translate 'hello' into French.",
            "What is the boiling point of water at sea level?",
            "Give one reason the sky looks blue.",
            "Why do cats purr?",
        ])
        config = tmp_path / "live.yaml"
        config.write_text(
            f"prompts: {prompts}\nmethod: dts\nbatch_size: 3\niterations: 2\nseed: 1\n"
            "generation:\n  samples_per_model: 2\n  max_tokens: 32\n  models:\n"
            f"    - {{name: gen-a, backend: openai, base_url: '{srv.base_url}', model: gen-a, max_retries: 1, timeout_s: 3}}\n"
            f"    - {{name: gen-b, backend: openai, base_url: '{srv.base_url}', model: gen-b, api_key_env: JUDGE_AND_GEN_B_KEY,"
            " max_retries: 1, timeout_s: 3}\n"
            f"embedding: {{backend: openai, base_url: '{srv.base_url}', model: embed-m, api_key_env: JUDGE_AND_GEN_B_KEY}}\n"
            f"judge: {{kind: likert, audit_log: '{tmp_path / 'audit.jsonl'}', model: {{backend: openai, base_url: '{srv.base_url}',"
            " model: judge-m, api_key_env: JUDGE_AND_GEN_B_KEY, max_retries: 1, timeout_s: 3}}\n"
            f"cache_path: '{tmp_path / 'cache.sqlite'}'\n"
            "prices: {judge-m: {input_per_mtok: 1.0, output_per_mtok: 2.0}}\n"
            "enn: {heads: 4, hidden: 16, steps: 20}\n",
            encoding="utf-8",
        )
        run = tmp_path / "run"
        for args in (("run", "-c", config, "--out", run), ("status", run), ("status", run, "--json"), ("resume", run),
                     ("export", run, "-o", tmp_path / "ds.jsonl"), ("export", run, "-o", tmp_path / "ds.parquet"),
                     ("estimate", "-c", config), ("check", "-c", config)):
            proc = activepref(*args, check=args[0] != "check")
            outputs += [proc.stdout, proc.stderr]
        sent = {r.headers.get("authorization") for r in srv.chat_requests}
        echoed = [r for r in srv.chat_requests if r.action in ("error401", "error500")]
    assert sent == {f"Bearer {DEFAULT_KEY}", f"Bearer {NAMED_KEY}"}  # both keys were really in use
    assert {r.headers.get("authorization") for r in srv.embedding_requests} == {f"Bearer {NAMED_KEY}"}  # the embedder's too
    assert echoed, "the server never echoed a key back: the test would prove nothing"

    # a bench and a human-judge run with the annotation app, under the same environment
    bench_settings = tmp_path / "bench.yaml"
    bench_settings.write_text("enn: {heads: 4, hidden: 16, steps: 20}\n", encoding="utf-8")
    proc = activepref("bench", "--pool", "builtin", "--methods", "random,dts", "--seeds", "1", "--budget", "16", "--batch-size", "8",
                      "--workers", "1", "-c", bench_settings, "--out", tmp_path / "bench")
    outputs += [proc.stdout, proc.stderr]
    human = tmp_path / "human.yaml"
    human.write_text("pool: builtin\nmethod: dts\nbatch_size: 4\niterations: 1\njudge: {kind: human}\n", encoding="utf-8")
    proc = activepref("run", "-c", human, "--out", tmp_path / "human", "--no-wait")
    outputs += [proc.stdout, proc.stderr]
    link = activepref("annotate", tmp_path / "human", "--add-annotator", "alice", "--port", "8799").stdout
    token = re.search(r"token=(\S+)", link).group(1)
    from tests.annotate.human_runs import form_fields, serve

    app = serve(tmp_path / "human")
    try:
        with httpx.Client(base_url=app.url) as client:
            client.get(f"/?token={token}")
            fields = form_fields(client.get("/").text)
            assert client.post("/label", data={**fields, "choice": "a"}).status_code == 303
            assert httpx.get(app.url + "/?token=wrong-" + token[:6]).status_code == 403
    finally:
        app.stop()
        outputs.append(app.proc.stderr.read().decode() if app.proc.stderr else "")
    proc = activepref("status", tmp_path / "human")
    outputs += [proc.stdout, proc.stderr]

    found = leaks(tmp_path, outputs, [DEFAULT_KEY, NAMED_KEY])
    assert not found, f"an API key was written to {found}"
    token_found = leaks(tmp_path / "human", outputs, [token])
    assert not token_found, f"an annotator token was written to {token_found}"
    assert any(p.name == "run.sqlite" for p in tmp_path.rglob("*")) and (tmp_path / "bench" / "results.csv").exists()
