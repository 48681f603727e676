"""The local ``transformers`` backend on a tiny random Llama built in code (tests/tiny_models.py):
greedy output equals a plain no-cache, no-padding greedy loop whatever the batching; seeded
sampling is reproducible and independent of the batching; max_tokens, finish_reason and token
counts; first-token log-probabilities equal a direct forward pass (padding excluded), score
tokens exact even outside the top k; failures come back as BackendError through the callback.
The ``vllm`` backend's test needs vLLM and CUDA (marked ``gpu``)."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models as tm  # noqa: E402

from activepref.backends import make_backend  # noqa: E402
from activepref.backends.base import BackendError, ChatRequest, ChatResult, SamplingParams  # noqa: E402
from activepref.backends.transformers_local import (  # noqa: E402
    TransformersBackend,
    load_model,
    score_token_ids,
)
from activepref.config import ModelConfig  # noqa: E402

EOS_BIAS = 1.3  # with max_tokens=12 some prompts stop (after 1, 4, 5, 8 tokens) and some run out


@pytest.fixture(scope="module")
def tokenizer():
    return tm.make_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tm.make_causal_lm(seed=0)


@pytest.fixture(scope="module")
def eos_model(model):
    return tm.with_eos_bias(model, EOS_BIAS)


def run(backend, requests) -> list[ChatResult | BackendError]:
    out: dict[int, ChatResult | BackendError] = {}

    def on_result(i, r):
        assert i not in out, "each request is reported once"
        out[i] = r

    backend.complete(requests, on_result)
    assert sorted(out) == list(range(len(requests)))
    return [out[i] for i in range(len(requests))]


def requests_for(prompts, **params) -> list[ChatRequest]:
    return [ChatRequest.from_messages(tm.conversation(p), SamplingParams(**params)) for p in prompts]


def reference(model, tokenizer, prompt, max_tokens, stop_ids):
    ids = tm.greedy_reference(model, tokenizer, tm.conversation(prompt), max_tokens, stop_ids)
    stopped = bool(ids) and ids[-1] in stop_ids
    text = tokenizer.decode(ids[:-1] if stopped else ids, skip_special_tokens=True)
    return text, len(ids), "stop" if stopped else "length"


# -- greedy decoding -------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_greedy_equals_plain_reference_for_every_batch_size(eos_model, tokenizer, batch_size):
    backend = TransformersBackend(eos_model, tokenizer, batch_size=batch_size)
    results = run(backend, requests_for(tm.PROMPTS, temperature=0.0, max_tokens=12))
    reasons = set()
    for prompt, res in zip(tm.PROMPTS, results):
        assert isinstance(res, ChatResult)
        text, n, finish = reference(eos_model, tokenizer, prompt, 12, backend.stop_ids)
        assert (res.text, res.completion_tokens, res.finish_reason) == (text, n, finish), prompt
        reasons.add(res.finish_reason)
    assert reasons == {"stop", "length"}  # both paths exercised


def test_max_tokens_per_request_in_one_batch(model, tokenizer):
    backend = TransformersBackend(model, tokenizer, batch_size=8)
    limits = [1, 2, 5, 9, 3, 7, 4]
    reqs = [ChatRequest.from_messages(tm.conversation(p), SamplingParams(temperature=0.0, max_tokens=m))
            for p, m in zip(tm.PROMPTS, limits)]
    for prompt, m, res in zip(tm.PROMPTS, limits, run(backend, reqs)):
        text, n, finish = reference(model, tokenizer, prompt, m, backend.stop_ids)
        assert res.completion_tokens == n <= m
        assert (res.text, res.finish_reason) == (text, finish)
        if res.finish_reason == "length":
            assert res.completion_tokens == m


def test_first_token_eos_gives_empty_stop(model, tokenizer):
    backend = TransformersBackend(tm.with_eos_bias(model, 100.0), tokenizer, batch_size=4)
    for res in run(backend, requests_for(tm.PROMPTS[:4], temperature=0.7, seed=1, max_tokens=5)):
        assert (res.text, res.completion_tokens, res.finish_reason) == ("", 1, "stop")


def test_prompt_token_counts_equal_the_chat_template(model, tokenizer):
    backend = TransformersBackend(model, tokenizer, batch_size=3)
    results = run(backend, requests_for(tm.PROMPTS, temperature=0.0, max_tokens=2))
    for prompt, res in zip(tm.PROMPTS, results):
        ids = tokenizer.apply_chat_template(tm.conversation(prompt), add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        assert res.prompt_tokens == len(ids)
        assert res.cached_prompt_tokens == 0


# -- sampling ------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_and_independent_of_batching(model, tokenizer):
    reqs = [ChatRequest.from_messages(tm.conversation(p), SamplingParams(temperature=1.0, max_tokens=10, seed=s))
            for s, p in enumerate(tm.PROMPTS)]
    texts = {bs: [r.text for r in run(TransformersBackend(model, tokenizer, batch_size=bs), reqs)] for bs in (1, 3, 8)}
    assert texts[1] == texts[3] == texts[8]
    again = [r.text for r in run(TransformersBackend(model, tokenizer, batch_size=3), reqs)]
    assert again == texts[1]
    # The same request in different company (reversed order, other batch mates) gives the same text.
    reversed_texts = [r.text for r in run(TransformersBackend(model, tokenizer, batch_size=2), reqs[::-1])]
    assert reversed_texts[::-1] == texts[1]


def test_different_seeds_differ_and_top_p_near_zero_is_greedy(model, tokenizer):
    backend = TransformersBackend(model, tokenizer, batch_size=4)
    prompt = [tm.PROMPTS[1]]
    by_seed = {s: run(backend, requests_for(prompt, temperature=1.0, max_tokens=10, seed=s))[0].text for s in range(6)}
    assert len(set(by_seed.values())) > 1
    greedy = run(backend, requests_for(tm.PROMPTS, temperature=0.0, max_tokens=8))
    nucleus = run(backend, requests_for(tm.PROMPTS, temperature=1.0, top_p=1e-6, max_tokens=8, seed=3))
    assert [r.text for r in nucleus] == [r.text for r in greedy]


# -- first-token log-probabilities ---------------------------------------------------------------


def test_first_token_logprobs_equal_a_direct_forward_pass(model, tokenizer):
    backend = TransformersBackend(model, tokenizer, batch_size=4)  # padded batches of mixed lengths
    k = 5
    score = ("1", "2", "3", "4", "5")
    results = run(backend, requests_for(tm.PROMPTS, temperature=0.0, max_tokens=1, top_logprobs=k, score_tokens=score))
    outside_top_k = 0
    for prompt, res in zip(tm.PROMPTS, results):
        ids = tokenizer.apply_chat_template(tm.conversation(prompt), add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([list(ids)])).logits[0, -1].float(), dim=-1)
        values, top = torch.topk(logp, k)
        expected = {tokenizer.decode([i]): v for v, i in zip(values.tolist(), top.tolist())}
        for d in score:
            expected[d] = float(logp[tm.token_id(d)])
            outside_top_k += tm.token_id(d) not in top.tolist()
        assert set(res.first_token_logprobs) == set(expected)
        for key, value in expected.items():
            assert res.first_token_logprobs[key] == pytest.approx(value, abs=1e-5), (prompt, key)
        assert res.text == tokenizer.decode([int(top[0])], skip_special_tokens=True)
    assert outside_top_k > 0  # the exactness of score tokens outside the top k was exercised


def test_no_logprobs_unless_asked(model, tokenizer):
    res = run(TransformersBackend(model, tokenizer), requests_for(tm.PROMPTS[:2], temperature=0.0, max_tokens=2))
    assert all(r.first_token_logprobs == {} for r in res)


def test_score_token_choice_on_a_byte_level_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "5": 1, "Ġ": 2, "Ġ5": 3, "7": 4, "Ġ9": 5, "9": 6, "x": 7, "y": 8}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "5"), ("Ġ", "9")], unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>")
    assert score_token_ids(tok, "5") == [("5", 1), (" 5", 3)]  # both reported, the no-space one under "5"
    assert score_token_ids(tok, "7") == [("7", 4)]  # no "Ġ7"
    assert score_token_ids(tok, "9") == [("9", 6), (" 9", 5)]
    with pytest.raises(BackendError, match="not a single token"):
        score_token_ids(tok, "xy")


# -- failures ---------------------------------------------------------------------------------


def test_bad_requests_fail_alone_through_the_callback(model, tokenizer):
    backend = TransformersBackend(model, tokenizer, batch_size=8)
    good = requests_for(tm.PROMPTS[:2], temperature=0.0, max_tokens=3)
    bad_tokens = requests_for(["hello"], temperature=0.0, max_tokens=1, top_logprobs=2, score_tokens=("not-a-word",))
    bad_limit = requests_for(["hello"], max_tokens=0)
    results = run(backend, [good[0], bad_tokens[0], bad_limit[0], good[1]])
    assert isinstance(results[0], ChatResult) and isinstance(results[3], ChatResult)
    assert isinstance(results[1], BackendError) and "not a single token" in str(results[1])
    assert isinstance(results[2], BackendError) and "max_tokens" in str(results[2])


def test_a_failing_batch_is_retried_one_by_one(model, tokenizer, monkeypatch):
    backend = TransformersBackend(model, tokenizer, batch_size=8)
    poison = tm.token_id("moon")
    original = model.generate

    def generate(*args, **kwargs):
        if (kwargs["input_ids"] == poison).any():
            raise RuntimeError("simulated out of memory")
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    results = run(backend, requests_for(tm.PROMPTS, temperature=0.0, max_tokens=3))
    for prompt, res in zip(tm.PROMPTS, results):
        if "moon" in prompt:
            assert isinstance(res, BackendError) and "simulated out of memory" in str(res)
        else:
            assert isinstance(res, ChatResult)


def test_an_exception_in_the_callback_propagates(model, tokenizer):
    backend = TransformersBackend(model, tokenizer, batch_size=2)

    def on_result(i, r):
        raise KeyboardInterrupt  # e.g. the store failed: complete must not swallow it

    with pytest.raises(KeyboardInterrupt):
        backend.complete(requests_for(tm.PROMPTS[:3], temperature=0.0, max_tokens=1), on_result)


# -- loading through the registry -------------------------------------------------------------


def test_factory_loads_from_a_folder_and_shares_the_weights(model, tokenizer, tmp_path):
    path = tm.save(model, tokenizer, tmp_path / "tiny")
    cfg = ModelConfig(backend="transformers", model=str(path), batch_size=3)
    backend = make_backend(cfg)
    assert backend.endpoint == f"transformers|{path}"
    assert load_model(str(path)).model is backend.model  # one copy per process
    assert make_backend(cfg).model is backend.model
    reqs = requests_for(tm.PROMPTS, temperature=0.0, max_tokens=6, top_logprobs=3)
    got = run(backend, reqs)
    want = run(TransformersBackend(model, tokenizer, batch_size=2), reqs)
    assert [r.text for r in got] == [r.text for r in want]
    for a, b in zip(got, want):
        assert a.first_token_logprobs == pytest.approx(b.first_token_logprobs, abs=1e-5)


# -- vLLM (CUDA only) -------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_names_the_extra():
    from activepref.extras import MissingExtraError

    with pytest.raises(MissingExtraError, match=r"activepref\[vllm\]"):
        make_backend(ModelConfig(backend="vllm", model="some/model"))


def fake_vllm_module(model, tokenizer):
    """A stand-in for ``vllm`` shaped like its offline API (LLM.generate -> RequestOutput with
    CompletionOutput.logprobs as dicts token id -> Logprob), greedy on the tiny model: checks
    how the backend builds SamplingParams and reads the outputs, on CPU."""
    import types

    def sampling_params(**kwargs):
        return types.SimpleNamespace(**kwargs)

    class LLM:
        instances: list = []

        def __init__(self, model, **kwargs):
            self.kwargs = dict(kwargs, model=model)
            self.calls: list = []
            LLM.instances.append(self)

        def get_tokenizer(self):
            return tokenizer

        def generate(self, prompts, params, use_tqdm=True):
            self.calls.append(params)
            outputs = []
            for prompt, sp in zip(prompts, params):
                ids = list(prompt["prompt_token_ids"])
                new, logprobs = [], []
                for _ in range(sp.max_tokens):
                    with torch.no_grad():
                        logp = torch.log_softmax(model(torch.tensor([ids + new])).logits[0, -1], dim=-1)
                    tok = int(torch.argmax(logp))
                    k = logp.shape[0] if sp.logprobs == -1 else (sp.logprobs or 0)
                    top = torch.topk(logp, k).indices.tolist() if k else []
                    logprobs.append({i: types.SimpleNamespace(logprob=float(logp[i]), rank=r + 1,
                                                              decoded_token=tokenizer.decode([i]))
                                     for r, i in enumerate(dict.fromkeys(top + [tok]))})
                    new.append(tok)
                    if tok == tokenizer.eos_token_id:
                        break
                stopped = new[-1] == tokenizer.eos_token_id
                text = tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True)
                completion = types.SimpleNamespace(text=text, token_ids=new, finish_reason="stop" if stopped else "length",
                                                   logprobs=logprobs if sp.logprobs is not None else None)
                outputs.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[completion], num_cached_tokens=0))
            return outputs

    return types.SimpleNamespace(LLM=LLM, SamplingParams=sampling_params)


def test_vllm_backend_against_a_stand_in_engine(eos_model, tokenizer, monkeypatch):
    import sys

    from activepref.backends import vllm_offline

    fake = fake_vllm_module(eos_model, tokenizer)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(vllm_offline, "_ENGINES", {})
    backend = make_backend(ModelConfig(backend="vllm", model="tiny", dtype="bfloat16", batch_size=4))
    assert backend.endpoint == "vllm|tiny"
    llm = fake.LLM.instances[-1]
    assert llm.kwargs["max_logprobs"] == -1 and llm.kwargs["dtype"] == "bfloat16"
    score = ("1", "2", "3", "4", "5")
    reqs = (requests_for(tm.PROMPTS, temperature=0.0, max_tokens=12)
            + requests_for(tm.PROMPTS[:3], temperature=0.0, max_tokens=1, top_logprobs=3, score_tokens=score)
            + requests_for(tm.PROMPTS[:2], temperature=0.0, max_tokens=1, top_logprobs=4)
            + requests_for(["hello"], temperature=0.0, max_tokens=1, top_logprobs=2, score_tokens=("not-a-word",)))
    got = run(backend, reqs)
    want = run(TransformersBackend(eos_model, tokenizer, batch_size=3), reqs)
    assert isinstance(got[-1], BackendError) and "not a single token" in str(got[-1])
    for a, b in zip(got[:-1], want[:-1]):
        assert (a.text, a.prompt_tokens, a.completion_tokens, a.finish_reason) == \
               (b.text, b.prompt_tokens, b.completion_tokens, b.finish_reason)
        assert set(a.first_token_logprobs) == set(b.first_token_logprobs)
        assert a.first_token_logprobs == pytest.approx(b.first_token_logprobs, abs=1e-5)
    sent = [sp for call in llm.calls for sp in call]
    assert [sp.logprobs for sp in sent[len(tm.PROMPTS):]] == [-1, -1, -1, 4, 4]
    assert all(sp.logprobs is None for sp in sent[: len(tm.PROMPTS)])
    assert [len(call) for call in llm.calls] == [4, 4, 4]  # chunks of batch_size


@pytest.mark.gpu
def test_vllm_backend_on_the_tiny_model(tmp_path):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (pip install 'activepref[vllm]')")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA device")
    # head_dim 64: what every vLLM attention backend supports
    model = tm.make_causal_lm(seed=0, hidden_size=256, heads=4, kv_heads=2)
    tokenizer = tm.make_tokenizer()
    path = tm.save(model, tokenizer, tmp_path / "tiny-vllm")
    backend = make_backend(ModelConfig(backend="vllm", model=str(path), dtype="float32", batch_size=16))
    score = ("1", "2", "3", "4", "5")
    judge = run(backend, requests_for(tm.PROMPTS, temperature=0.0, max_tokens=1, top_logprobs=3, score_tokens=score))
    local = run(TransformersBackend(model, tokenizer, batch_size=4),
                requests_for(tm.PROMPTS, temperature=0.0, max_tokens=1, top_logprobs=3, score_tokens=score))
    for a, b in zip(judge, local):
        assert isinstance(a, ChatResult)
        assert a.prompt_tokens == b.prompt_tokens and a.completion_tokens == 1
        for d in score:
            assert a.first_token_logprobs[d] == pytest.approx(b.first_token_logprobs[d], abs=2e-3)
    sampled = requests_for(tm.PROMPTS, temperature=1.0, max_tokens=6, seed=7)
    first = run(backend, sampled)
    again = run(backend, sampled)
    assert [r.text for r in first] == [r.text for r in again]
    assert all(r.completion_tokens <= 6 and r.finish_reason in ("stop", "length") for r in first)


def test_model_loads_are_announced_once_and_a_first_gguf_load_says_it_converts(tmp_path, monkeypatch, capsys):
    """A command's progress names each model as it starts loading (a first GGUF load converts
    for ~30 s, silent otherwise), not the ones the process already holds; the CLI's progress
    prints it as a line when its output is not a terminal."""
    from activepref.backends import converted_models
    from activepref.backends.transformers_local import _announce_load, clear_model_cache, watching_loads
    from activepref.cli import _Bars

    folder = tmp_path / "tiny"
    tm.make_causal_lm(seed=0).save_pretrained(folder)
    tm.make_tokenizer().save_pretrained(folder)
    seen: list[str] = []
    clear_model_cache()
    with watching_loads(seen.append):
        load_model(str(folder))
        load_model(str(folder))  # held by the process: no second word
    load_model(str(folder), dtype="bfloat16")  # nobody watching
    clear_model_cache()
    assert seen == [f"loading {folder}"]

    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv(converted_models.ENV, str(tmp_path / "copies"))
    with watching_loads(seen.append):
        _announce_load(str(tmp_path / "g"), "m.gguf", "float32", "causal_lm")
        copy = converted_models.copy_dir(str(tmp_path / "g"), "m.gguf", "float32", "causal_lm")
        copy.mkdir(parents=True)
        (copy / converted_models.DONE).write_text("{}")
        _announce_load(str(tmp_path / "g"), "m.gguf", "float32", "causal_lm")  # a finished copy: no conversion
        monkeypatch.setenv(converted_models.ENV, "off")
        _announce_load(str(tmp_path / "g"), "m.gguf", "float32", "causal_lm")
    assert seen[1:] == ["loading g/m.gguf (converting the GGUF: about 30 s on two cores, once: later loads read a copy)",
                        "loading g/m.gguf", "loading g/m.gguf (converting the GGUF: about 30 s on two cores)"]

    capsys.readouterr()
    with _Bars("quickstart", plain=True):
        _announce_load(str(folder), None, "float32", "causal_lm")
    _announce_load(str(folder), None, "float32", "causal_lm")  # after the command's progress closed: silent
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("quickstart [") and lines[0].endswith(f"] loading {folder}")
