"""The Ray engine against a real local Ray cluster (started here, stopped at the end) and the
fake OpenAI-compatible server: replicas as actors, failover after a replica dies, the same
dataset with and without Ray, a driver killed mid-run and resumed, and bench runs as Ray tasks.

The cluster lives in this test process (``ray.init``), so each xdist worker that runs these
tests has its own; CLI runs in subprocesses join it through ``RAY_ADDRESS``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from cli_fixtures import one_torch_thread, wide_consoles  # noqa: E402,F401  (autouse fixtures)
from servers.fake_openai import FakeOpenAIServer  # noqa: E402
from test_live_server import (  # noqa: E402
    CLI,
    GEN_MODELS,
    PLAIN_PROMPTS,
    SAMPLES,
    LiveScript,
    assert_ok,
    canon,
    chat,
    export_jsonl,
    invoke,
    status_json,
    write_config,
    write_prompts,
)

from activepref.backends.base import BackendError, ChatRequest, ChatResult, SamplingParams  # noqa: E402
from activepref.config import EngineConfig, ModelConfig  # noqa: E402
from activepref.engines import make_engine  # noqa: E402
from activepref.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Any:
    """A 2-CPU local Ray cluster owned by this process; yields its address."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster: no token to hand around
    temp = Path(f"/tmp/ap-ray-{os.getpid()}")  # Ray's socket paths must stay short
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp), logging_level="WARNING", log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()


def _requests(n: int, tag: str = "q") -> list[ChatRequest]:
    return [ChatRequest((("user", f"{tag} {i}"),), SamplingParams(max_tokens=8, seed=i)) for i in range(n)]


def test_options_are_checked_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match=r"engine.options.actors.replicas"):
        make_engine(EngineConfig(kind="ray", options={"actors": {"replicas": 0}}))
    with pytest.raises(ConfigError, match=r"engine.options.no_such_option"):
        make_engine(EngineConfig(kind="ray", options={"no_such_option": 1}))
    with pytest.raises(ConfigError, match=r"embedder.replicas"):
        make_engine(EngineConfig(kind="ray", options={"embedder": {"replicas": 2}}))


def test_a_replica_waits_for_its_driver_so_a_driver_kill_loses_a_bounded_number_of_answers() -> None:
    """The actor's side of a replica, consumed slowly (a driver storing each answer): the
    replica stops sending once max_concurrency answers wait in its queue, so a killed driver
    leaves at most a few times max_concurrency answers unstored, however fast the server. A
    driver that goes away (the generator is closed) cancels what the replica has not sent."""
    from activepref.engines.ray_cluster import ChatActor

    with FakeOpenAIServer() as srv:
        model = ModelConfig(name="m", backend="openai", model="m", base_url=srv.base_url, max_concurrency=3)
        actor = ChatActor(model.model_dump_json())
        requests = [ChatRequest.from_messages([{"role": "user", "content": f"q{i}"}], SamplingParams()) for i in range(60)]
        stream = actor.complete(requests)
        consumed, ahead = 0, []
        for batch in stream:
            consumed += len(batch)
            time.sleep(0.2)  # storing the batch, slowly: the server is far quicker
            ahead.append(len(srv.chat_requests) - consumed)  # sent but not stored: what a kill now would lose
            if consumed >= 30:
                break
        assert max(ahead) <= 3 * 3 + 1, ahead
        stream.close()  # the driver is gone
        time.sleep(0.5)
        sent = len(srv.chat_requests)
        time.sleep(0.5)
        assert len(srv.chat_requests) == sent <= consumed + 3 * 3 + 1, (sent, consumed)


def test_replicas_answer_every_request_once_with_the_local_endpoint(cluster) -> None:
    model = ModelConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env="AP_TEST_KEY")
    with FakeOpenAIServer(latency_s=0.05, slots=8) as srv:
        model = model.model_copy(update={"base_url": srv.base_url})
        os.environ["AP_TEST_KEY"] = "k"
        backend = make_engine(EngineConfig(kind="ray", options={"actors": {"replicas": 2}})).chat_backend(model)
        from activepref.backends import make_backend

        assert backend.endpoint == make_backend(model).endpoint  # same cache keys with or without Ray
        got: dict[int, Any] = {}
        backend.complete(_requests(24), lambda i, r: got.__setitem__(i, r))
        assert sorted(got) == list(range(24)) and all(isinstance(r, ChatResult) for r in got.values())
        assert len(srv.chat_requests) == 24  # each once
        assert len({r.body["messages"][0]["content"] for r in srv.chat_requests}) == 24
        pids = {ray.get(a.pid.remote()) for a in backend._actors}
        assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, not this one


def test_a_replica_that_dies_mid_call_loses_nothing_and_repeats_no_delivered_answer(cluster) -> None:
    """SIGKILL one replica's process while it has requests in flight: the driver resends only
    what that replica had not delivered, to the restarted replica; every request is answered."""
    delivered_at: dict[str, float] = {}
    with FakeOpenAIServer(latency_s=0.3, slots=4) as srv:
        model = ModelConfig(backend="openai", model="m", base_url=srv.base_url, api_key_env="AP_TEST_KEY", max_concurrency=4)
        os.environ["AP_TEST_KEY"] = "k"
        backend = make_engine(EngineConfig(kind="ray", options={"actors": {"replicas": 1}})).chat_backend(model)
        pid = ray.get(backend._actors[0].pid.remote())
        requests = _requests(16, "die")
        got: dict[int, Any] = {}
        killed = threading.Event()
        kill_time: list[float] = []

        def on_result(i: int, r: Any) -> None:
            got[i] = r
            delivered_at[requests[i].messages[0][1]] = time.monotonic()
            if len(got) == 5 and not killed.is_set():
                killed.set()
                kill_time.append(time.monotonic())
                os.kill(pid, signal.SIGKILL)  # 4 more are in flight at the server now

        backend.complete(requests, on_result)
        assert killed.is_set()
        assert sorted(got) == list(range(16)) and all(isinstance(r, ChatResult) for r in got.values()), got
        # (a request the kill cut off mid-body reaches the server without a JSON body: not an answer)
        asked = [r.body["messages"][0]["content"] for r in srv.chat_requests if isinstance(r.body, dict)]
        repeated = {t for t in asked if asked.count(t) > 1}
        before_kill = {t for t, at in delivered_at.items() if at <= kill_time[0]}
        assert len(before_kill) == 5
        assert not repeated & before_kill  # nothing delivered before the death was asked again
        assert len(asked) - len(set(asked)) <= 4  # at most what was in flight in the dead replica
        assert ray.get(backend._actors[0].pid.remote()) != pid  # Ray restarted the replica


def test_a_replica_that_never_comes_back_fails_its_requests_as_errors(cluster) -> None:
    with FakeOpenAIServer(latency_s=0.2) as srv:
        model = ModelConfig(backend="openai", model="m", base_url=srv.base_url, api_key_env="AP_TEST_KEY")
        os.environ["AP_TEST_KEY"] = "k"
        backend = make_engine(EngineConfig(kind="ray")).chat_backend(model)
        for a in backend._actors:
            ray.kill(a, no_restart=True)
        got: dict[int, Any] = {}
        backend.complete(_requests(3, "gone"), lambda i, r: got.__setitem__(i, r))
        assert sorted(got) == [0, 1, 2] and all(isinstance(r, BackendError) for r in got.values())
        assert "Ray replica lost" in str(got[0])


# ------------------------------------------------------------------ whole runs
def _ray_config(cfg: Path, replicas: int = 2) -> Path:
    """The live test config with ``engine: ray`` (2 replicas per model, prefetch on)."""
    text = cfg.read_text() + f"engine: {{kind: ray, options: {{actors: {{replicas: {replicas}}}}}}}\n"
    out = cfg.with_name(cfg.stem + "-ray.yaml")
    out.write_text(text)
    return out


def _cache_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM request_cache").fetchone()[0]


@pytest.fixture(scope="module")
def live(tmp_path_factory, cluster) -> Any:
    root = tmp_path_factory.mktemp("ray-live")
    script = LiveScript()
    srv = FakeOpenAIServer(script, latency_s=0.02).start()
    prompts = write_prompts(root / "prompts.jsonl", PLAIN_PROMPTS)
    cfg = write_config(root, "local", srv, prompts, root / "cache-local.sqlite")
    assert_ok(invoke("run", "--config", cfg, "--out", root / "run-local"))
    local_export = export_jsonl(root / "run-local", root / "local.jsonl")
    yield {"root": root, "srv": srv, "script": script, "prompts": prompts, "local_export": local_export}
    srv.stop()


def test_the_same_config_and_seed_give_the_same_dataset_with_ray(live) -> None:
    root, srv = live["root"], live["srv"]
    cfg = _ray_config(write_config(root, "ray", srv, live["prompts"], root / "cache-ray.sqlite"))
    start = len(srv.requests)
    assert_ok(invoke("run", "--config", cfg, "--out", root / "run-ray"))
    assert export_jsonl(root / "run-ray", root / "ray.jsonl") == live["local_export"]
    assert (root / "ray.jsonl").read_bytes() == (root / "local.jsonl").read_bytes()
    assert_ok(invoke("export", root / "run-ray", "--format", "parquet", "-o", root / "ray.parquet"))
    assert_ok(invoke("export", root / "run-local", "--format", "parquet", "-o", root / "local.parquet"))
    assert (root / "ray.parquet").read_bytes() == (root / "local.parquet").read_bytes()
    gen, judge = chat(srv, start)
    assert len(gen) == len(PLAIN_PROMPTS) * len(GEN_MODELS) * SAMPLES  # prefetch asked nothing twice
    assert len({canon(r.body) for r in gen}) == len(gen)
    timings = json.loads((root / "run-ray" / "timings.json").read_text())
    assert timings["prefetch"] > 0  # iteration 1 was generated and embedded while iteration 0 trained
    with sqlite3.connect(root / "run-ray" / "run.sqlite") as conn:
        stats = conn.execute("SELECT calls, cache_hits FROM call_stats WHERE stage = 'generation' ORDER BY iteration").fetchall()
    assert stats == [(len(gen) // 2, 0)] * 2  # the prefetch's calls are booked to its iteration, not as cache hits


def test_an_openai_embedder_under_ray_embeds_on_the_server_into_the_shared_cache(live) -> None:
    """The embed actor calls the server (no probe for the dimension), the vectors land in the
    driver's request cache under the same keys as the local engine's: a local run of the same
    config afterwards asks nothing and writes the same dataset."""
    root = live["root"]
    srv = FakeOpenAIServer(LiveScript()).start()  # its own server: the shared one's request counts stay the other tests'

    def embed_on_server(cfg: Path) -> Path:
        text = cfg.read_text().replace("embedding: {backend: sentence_transformers, model: builtin}",
                                       f"embedding: {{backend: openai, base_url: '{srv.base_url}', model: embed-m, batch_size: 8}}")
        cfg.write_text(text)
        return cfg

    try:
        cache = root / "cache-embed.sqlite"
        cfg = embed_on_server(_ray_config(write_config(root, "ray-embed", srv, live["prompts"], cache)))
        assert_ok(invoke("run", "--config", cfg, "--out", root / "run-ray-embed"))
        texts = [t for r in srv.embedding_requests for t in r.body["input"]]
        assert len(texts) == len(set(texts)) == len(PLAIN_PROMPTS) * len(GEN_MODELS) * SAMPLES  # every response once, no probe
        local = embed_on_server(write_config(root, "local-embed", srv, live["prompts"], cache))
        before = len(srv.requests)
        assert_ok(invoke("run", "--config", local, "--out", root / "run-local-embed"))
        assert len(srv.requests) == before
        assert (export_jsonl(root / "run-local-embed", root / "local-embed.jsonl")
                == export_jsonl(root / "run-ray-embed", root / "ray-embed.jsonl"))
    finally:
        srv.stop()


def test_resume_with_another_engine_continues_the_same_run(live, cluster) -> None:
    """A local run dies after iteration 0 (crash hook); `resume --engine ray` finishes it."""
    from activepref.core.determinism import CRASH_ENV

    root, srv = live["root"], live["srv"]
    cfg = write_config(root, "switch", srv, live["prompts"], root / "cache-switch.sqlite")
    out = root / "run-switch"
    env = {**os.environ, CRASH_ENV: "train.after_commit@0", "ACTIVEPREF_CACHE": str(root / "unused.sqlite")}
    proc = subprocess.run([*CLI, "run", "--config", str(cfg), "--out", str(out)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert status_json(out)["iterations_done"] == 1
    assert_ok(invoke("resume", out, "--engine", "ray"))
    assert status_json(out)["iterations_done"] == 2
    assert export_jsonl(out, root / "switch.jsonl") == live["local_export"]


def test_sigkill_of_the_driver_at_a_random_moment_then_resume(live, cluster) -> None:
    """The `run --engine ray` process is SIGKILLed after a random number of answered requests.
    `resume` gives the uninterrupted dataset, and sends exactly the requests whose answers were
    not in the request cache at the kill: nothing committed is asked again."""
    root, srv = live["root"], live["srv"]
    cache = root / "cache-kill.sqlite"
    cfg = _ray_config(write_config(root, "kill", srv, live["prompts"], cache))
    out = root / "run-kill"
    total = len(PLAIN_PROMPTS) * len(GEN_MODELS) * SAMPLES + 4 * 2 * len(PLAIN_PROMPTS)  # generation + 4 aspects x 2 per prompt
    from kill_harness import kill_seed

    seed = kill_seed(int(time.time()))
    print(f"kill seed {seed} (ACTIVEPREF_KILL_SEED replays it)")
    kill_after = random.Random(seed).randrange(3, total - 3)
    start = len(srv.requests)
    env = {**os.environ, "RAY_ADDRESS": cluster, "ACTIVEPREF_CACHE": str(root / "unused.sqlite")}
    with open(root / "kill.log", "wb") as log:
        proc = subprocess.Popen([*CLI, "run", "--config", str(cfg), "--out", str(out)], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while len(srv.requests) - start < kill_after and proc.poll() is None:
                assert time.monotonic() < deadline, "the run made too few requests"
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log_text = (root / "kill.log").read_text(errors="replace")[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"kill after {kill_after}: the run ended first\n{log_text}"
    cached_at_kill = _cache_rows(cache)
    before_resume = len(srv.requests)
    time.sleep(1.0)  # let the dead driver's orphaned in-flight requests reach the server first
    before_resume = len(srv.requests)
    result = invoke("resume", out)
    assert_ok(result)
    resent = len(srv.requests) - before_resume
    final = _cache_rows(cache)
    assert resent == final - cached_at_kill, (kill_after, cached_at_kill, final, resent)  # only the misses
    assert export_jsonl(out, root / "kill.jsonl") == live["local_export"]
    lost_in_flight = (before_resume - start) - cached_at_kill
    assert 0 <= lost_in_flight <= 2 * 8 * 2  # answered but never committed: at most what was in flight


RAY_KILLS = 8


@pytest.mark.slow
def test_many_kills_of_a_ray_driver_resume_to_the_same_dataset(live, cluster) -> None:
    """The `--engine ray` driver SIGKILLed RAY_KILLS times, each after a seeded random number
    of requests of its own life (so every life adds to the run, whatever the load), and
    resumed after each: the uninterrupted dataset, and only answers that were in flight at a
    kill are ever asked again."""
    from kill_harness import kill_seed

    seed = kill_seed(31)
    print(f"kill seed {seed} (ACTIVEPREF_KILL_SEED replays it)")
    rng = random.Random(seed)
    root, srv = live["root"], live["srv"]
    cache = root / "cache-many.sqlite"
    cfg = _ray_config(write_config(root, "many", srv, live["prompts"], cache))
    out = root / "run-many"
    start = len(srv.requests)
    env = {**os.environ, "RAY_ADDRESS": cluster, "ACTIVEPREF_CACHE": str(root / "unused.sqlite")}
    landed: list[int] = []
    for _ in range(RAY_KILLS):
        command = ["resume", str(out)] if (out / "run.sqlite").exists() else ["run", "--config", str(cfg), "--out", str(out)]
        after = rng.randrange(1, 12)
        life = len(srv.requests)
        proc = subprocess.Popen([*CLI, *command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 240
            while len(srv.requests) - life < after and proc.poll() is None:
                assert time.monotonic() < deadline, "a life made too few requests"
                time.sleep(0.005)
            if proc.poll() is not None:
                break  # the run finished first
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            landed.append(after)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        time.sleep(1.0)  # the dead driver's orphaned in-flight requests reach the server
    print(f"{len(landed)} kills, each after this many requests of its life: {landed}")
    assert len(landed) >= RAY_KILLS // 2, landed
    assert_ok(invoke("resume", out))
    assert export_jsonl(out, root / "many.jsonl") == live["local_export"]
    sent, stored = len(srv.requests) - start, _cache_rows(cache)
    print(f"{sent} requests for {stored} stored answers: {sent - stored} asked again after a kill cut them off")
    assert 0 <= sent - stored <= len(landed) * 2 * 8 * 2  # per kill, at most what was in flight


def test_bench_runs_as_ray_tasks_with_the_same_results(tmp_path, cluster) -> None:
    import csv

    args = ["--pool", "builtin", "--methods", "random,dts", "--budget", "32", "--seeds", "1", "--batch-size", "16"]
    assert_ok(invoke("bench", *args, "--out", tmp_path / "local"))
    assert_ok(invoke("bench", *args, "--out", tmp_path / "ray", "--engine", "ray"))

    def rows(path: Path) -> list[dict[str, str]]:
        with open(path / "results.csv", newline="") as fh:
            return [{k: v for k, v in r.items() if "time" not in k and not k.endswith("_s")} for r in csv.DictReader(fh)]

    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
    assert_ok(invoke("bench", *args, "--out", tmp_path / "ray", "--engine", "ray"))  # resumable: all skipped


@pytest.mark.gpu
def test_a_vllm_replica_as_a_ray_actor_answers_like_the_local_backend(tmp_path, cluster) -> None:
    """A ``backend: vllm`` model with ``num_gpus: 1`` runs its offline engine inside a Ray actor
    on the GPU; seeded answers match the same backend in this process."""
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        pytest.skip("needs vllm and a CUDA device")
    if not ray.cluster_resources().get("GPU"):
        pytest.skip("the local Ray cluster sees no GPU")
    import tiny_models as tm

    from activepref.backends import make_backend

    path = tm.save(tm.make_causal_lm(seed=0, hidden_size=256, heads=4, kv_heads=2), tm.make_tokenizer(), tmp_path / "tiny")
    model = ModelConfig(backend="vllm", model=str(path), dtype="float32", batch_size=16)
    reqs = [ChatRequest((("user", p),), SamplingParams(temperature=1.0, max_tokens=6, seed=7)) for p in tm.PROMPTS]
    remote: dict[int, Any] = {}
    engine = make_engine(EngineConfig(kind="ray", options={"models": {model.label(): {"num_gpus": 1}}}))
    backend = engine.chat_backend(model)
    backend.complete(reqs, lambda i, r: remote.__setitem__(i, r))
    for a in backend._actors:  # free the GPU before the local engine loads
        ray.kill(a, no_restart=True)
    here: dict[int, Any] = {}
    make_backend(model).complete(reqs, lambda i, r: here.__setitem__(i, r))
    assert [remote[i].text for i in range(len(reqs))] == [here[i].text for i in range(len(reqs))]


def _replica_pids(cluster_tmp: str) -> list[int]:
    """Processes of this test's cluster running a ChatActor (its raylet's command line names our temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not cmd.startswith("ray::ChatActor"):
                continue
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if cluster_tmp in parent:
            pids.append(int(entry.name))
    return sorted(pids)


def test_a_replica_killed_mid_run_changes_nothing_in_the_dataset(live, cluster) -> None:
    """SIGKILL of one generation replica while its requests are in flight at the server: the
    run finishes on its own (the replica's undelivered requests are resent once Ray restarts it),
    the dataset equals the local run's, and no request is answered twice except those the dead
    replica had in flight."""
    from activepref.config import load_config
    from activepref.core import runs

    root, srv = live["root"], live["srv"]
    cfg = _ray_config(write_config(root, "replica", srv, live["prompts"], root / "cache-replica.sqlite"))
    start = len(srv.requests)
    killed: list[int] = []
    seen: list[tuple[int, int]] = []

    finished = threading.Event()

    def killer() -> None:
        while not finished.is_set() and not killed:
            gen, _ = chat(srv, start)
            pids = _replica_pids(f"/tmp/ap-ray-{os.getpid()}")
            seen.append((len(gen), len(pids)))
            if len(gen) >= 6 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.01)

    script = live["script"]
    script.hold(None)
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        runs.run(load_config(cfg, {}), root / "run-replica")
    finally:
        finished.set()
        t.join()
    assert killed, f"no replica was found to kill: (generation requests, replicas) seen {sorted(set(seen))}"
    assert export_jsonl(root / "run-replica", root / "replica.jsonl") == live["local_export"]
    gen, judge = chat(srv, start)
    bodies = [canon(r.body) for r in gen + judge]
    assert len(set(bodies)) == len(PLAIN_PROMPTS) * len(GEN_MODELS) * SAMPLES + 4 * 2 * len(PLAIN_PROMPTS)
    assert len(bodies) - len(set(bodies)) <= 8  # repeats: at most what one replica had in flight
