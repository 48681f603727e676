"""Backend ``transformers``: a local causal LM (hub id, local folder, or a GGUF file inside a
folder) run with batched, left-padded ``generate`` on CPU or GPU.

Loading. :func:`load_model` loads model + tokenizer once per process and caches them under
``(model, gguf_file, dtype, device, model_class)``, so a judge, a generator and an embedder on
the same model share one copy of the weights. ``gguf_file`` is passed to ``from_pretrained``
(needs ``gguf`` and ``accelerate``; transformers de-quantises the weights to ``dtype``); a local
GGUF is converted once and kept as a plain copy on disk, so later processes load in well under a
second (:mod:`activepref.backends.converted_models`; ``ACTIVEPREF_MODEL_CACHE=off`` turns it off).
``dtype`` ``"float32"`` (the default, and the only sensible choice on CPU), ``"bfloat16"``,
``"float16"`` or ``"auto"`` (the checkpoint's own); ``device`` ``"cpu"``, ``"cuda"``,
``"cuda:N"``, ``"mps"`` or ``"auto"`` (cuda when available, else cpu).

Prompts. Each request's messages go through the tokenizer's chat template
(``apply_chat_template(..., add_generation_prompt=True)``, exactly the ids HF would produce);
a request whose template fails is reported as a ``BackendError`` on its own.

Decoding. Requests are sorted by (max_tokens, prompt length) and run in batches of
``batch_size``, left-padded. The sampling is ours, not ``generate``'s: a logits processor
picks each row's next token and ``generate`` runs greedy on the result, so that

- temperature 0 is greedy (argmax of the raw logits);
- temperature > 0 samples from ``softmax(logits / temperature)`` restricted to the ``top_p``
  nucleus, with a ``torch.Generator`` per request seeded with ``SamplingParams.seed`` (a fresh
  random seed when ``None``): a request's tokens depend on its own seed and logits only, not on
  the other requests or on how they were batched. (Padding changes the float rounding of a
  batched forward pass by ~1e-6, so a token whose choice sits on such a knife edge could in
  principle flip; in practice results are identical across batch sizes.)
- no other logits processing: the model's ``generation_config`` (repetition penalty, top-k,
  ...) is deliberately ignored, so the output depends on ``SamplingParams`` only;
- each row stops at its own ``max_tokens`` or at a stop token: the tokenizer's EOS, the
  model's ``generation_config.eos_token_id`` (int or list), and the usual end-of-turn tokens
  (``<|im_end|>``, ``<|eot_id|>``, ``<|end|>``, ``<end_of_turn>``, ``<|endoftext|>``) when the
  tokenizer has them. ``finish_reason`` is ``"stop"`` or ``"length"``.

Counts. ``prompt_tokens`` = length of the templated prompt; ``completion_tokens`` = generated
tokens including the stop token when one was generated (the text excludes it and any other
special token). ``cached_prompt_tokens`` is always 0.

First-token log-probabilities (``top_logprobs`` > 0 or ``score_tokens``): the log-softmax of the
raw logits at the first generated position (before temperature/top-p, like vLLM's default
``raw_logprobs``): the ``top_logprobs`` best tokens, keyed by their decoded string (when two ids
decode to the same string the more likely one is kept), plus the exact log-probability of
every ``score_tokens`` string, whether or not it is in the top k. A score string ``s`` maps to
one token id: the token that decodes to exactly ``s`` (``tokenizer.encode(s)`` when that is a
single token, else the vocabulary entry ``s``); only when no such token exists, the
space-prefixed variant (``" s"``, vocabulary ``"Ġs"`` or ``"▁s"``). When both exist, the
space-prefixed token is also reported, under the key ``" s"`` (after a chat template's
generation prompt the no-space token is the natural one; judges that strip keys add the two).
A score string with neither form as a single token fails the request with a ``BackendError``.

Errors. A batch that raises is re-run one request at a time, so one bad request (too long for
the model, say) fails alone, as a ``BackendError`` through ``on_result``. ``complete`` raises
only when ``on_result`` raises.
"""

from __future__ import annotations

import importlib.util
import logging
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from activepref.backends import register_backend
from activepref.backends.base import BackendError, ChatRequest, ChatResult, OnResult, SamplingParams
from activepref.backends.converted_models import load_gguf
from activepref.extras import MissingExtraError, require

if TYPE_CHECKING:
    from activepref.config import ModelConfig

log = logging.getLogger(__name__)

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
MODEL_CLASSES = ("causal_lm", "seq_cls", "base")


# -- loading and the per-process model cache --------------------------------------------


@dataclass
class LoadedModel:
    """A model and its tokenizer as loaded once per process; ``lock`` serialises their use."""

    model: Any
    tokenizer: Any
    key: tuple
    lock: threading.RLock = field(default_factory=threading.RLock)


_CACHE: dict[tuple, LoadedModel] = {}
_CACHE_LOCK = threading.Lock()
_WATCHERS: list[Callable[[str], None]] = []


@contextmanager
def watching_loads(report: Callable[[str], None]) -> Iterator[None]:
    """Within this block, ``report(text)`` hears of every model this process loads (not those
    it has already), before the load starts: a first GGUF load converts the file for ~30 s on
    two cores, and without a word the command would look hung."""
    _WATCHERS.append(report)
    try:
        yield
    finally:
        _WATCHERS.remove(report)


def _announce_load(model: str, gguf_file: str | None, dtype: str, model_class: str) -> None:
    if not _WATCHERS:
        return
    from pathlib import Path

    from activepref.backends.converted_models import DONE, copy_dir

    name = f"{Path(model).name}/{gguf_file}" if gguf_file else model
    text = f"loading {name}"
    if gguf_file:
        folder = copy_dir(str(model), gguf_file, dtype, model_class)
        if folder is None or not (folder / DONE).is_file():
            text += " (converting the GGUF: about 30 s on two cores" + (", once: later loads read a copy)" if folder else ")")
    for report in list(_WATCHERS):
        report(text)


def torch_dtype(name: str):
    """``"float32"`` -> ``torch.float32``; ``"auto"`` stays ``"auto"``."""
    torch = require("torch")
    if name == "auto":
        return "auto"
    value = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise BackendError(f"unknown dtype {name!r}: use float32, bfloat16, float16 or auto")
    return value


def resolve_device(device: str) -> str:
    if device == "auto":
        torch = require("torch")
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(
    model: str,
    gguf_file: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    model_class: str = "causal_lm",
) -> LoadedModel:
    """Load (or fetch from the process cache) ``model`` and its tokenizer, in eval mode.

    model_class: ``causal_lm`` (AutoModelForCausalLM), ``seq_cls``
    (AutoModelForSequenceClassification, e.g. a reward model) or ``base`` (AutoModel).
    """
    if model_class not in MODEL_CLASSES:
        raise BackendError(f"model_class {model_class!r} unknown; choose one of {', '.join(MODEL_CLASSES)}")
    device = resolve_device(device)
    key = (str(model), gguf_file, str(dtype), device, model_class)
    with _CACHE_LOCK:
        entry = _CACHE.get(key)
        if entry is not None:
            return entry
        _announce_load(str(model), gguf_file, str(dtype), model_class)
        transformers = require("transformers")
        auto = {
            "causal_lm": transformers.AutoModelForCausalLM,
            "seq_cls": transformers.AutoModelForSequenceClassification,
            "base": transformers.AutoModel,
        }[model_class]
        if gguf_file:
            for module in ("gguf", "accelerate"):
                if importlib.util.find_spec(module) is None:
                    raise MissingExtraError(f"loading a GGUF file needs {module}: pip install 'activepref[local]'")

            def convert() -> tuple[Any, Any]:
                return (auto.from_pretrained(model, dtype=torch_dtype(dtype), gguf_file=gguf_file),
                        transformers.AutoTokenizer.from_pretrained(model, gguf_file=gguf_file))

            # a converted copy on disk: the GGUF's dequantisation runs once per file, not per process
            net, tokenizer = load_gguf(str(model), gguf_file, str(dtype), torch_dtype(dtype), model_class, auto, convert)
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(model)
            net = auto.from_pretrained(model, dtype=torch_dtype(dtype))
        net.to(device)
        net.eval()
        entry = LoadedModel(net, tokenizer, key)
        _CACHE[key] = entry
        return entry


def clear_model_cache() -> None:
    """Forget every cached model (their memory is freed once nothing else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# -- token helpers ------------------------------------------------------------------------


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template."""
    out = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    ids = out["input_ids"]
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS of the tokenizer and of the model's generation config, plus end-of-turn tokens."""
    ids: list[int] = []

    def add(value: Any) -> None:
        if value is None:
            return
        for v in value if isinstance(value, (list, tuple, set)) else [value]:
            if v is not None and int(v) >= 0 and int(v) not in ids:
                ids.append(int(v))

    add(tokenizer.eos_token_id)
    gen_cfg = getattr(model, "generation_config", None)
    add(getattr(gen_cfg, "eos_token_id", None))
    vocab = tokenizer.get_vocab()
    for tok in END_OF_TURN_TOKENS:
        if tok in vocab:
            add(vocab[tok])
    if not ids:
        raise BackendError("the tokenizer has no EOS token and the model no eos_token_id: cannot tell when to stop")
    return ids


def _single_token(tokenizer: Any, text: str) -> int | None:
    """The id of the one token that decodes to exactly ``text``, if any."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id and tokenizer.decode(ids) == text:
        return int(ids[0])
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return int(vocab[text])
    return None


def _space_variant(tokenizer: Any, text: str) -> int | None:
    ids = tokenizer.encode(" " + text, add_special_tokens=False)
    # a SentencePiece "▁5" decodes alone to "5" (the leading space is dropped), hence strip()
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id and tokenizer.decode(ids).strip() == text.strip():
        return int(ids[0])
    vocab = tokenizer.get_vocab()
    for prefix in ("Ġ", "▁"):
        if prefix + text in vocab:
            return int(vocab[prefix + text])
    return None


def score_token_ids(tokenizer: Any, text: str) -> list[tuple[str, int]]:
    """(key, token id) pairs reported for the score string ``text`` (see the module doc)."""
    exact = _single_token(tokenizer, text)
    spaced = _space_variant(tokenizer, text) if not text.startswith(" ") else None
    if exact is None and spaced is None:
        raise BackendError(f"score token {text!r} is not a single token of this tokenizer")
    pairs = []
    if exact is not None:
        pairs.append((text, exact))
        if spaced is not None and spaced != exact:
            pairs.append((" " + text, spaced))
    else:
        pairs.append((text, spaced))  # type: ignore[arg-type]
    return pairs


# -- the backend --------------------------------------------------------------------------


@dataclass
class _Prepared:
    index: int
    ids: list[int]
    params: SamplingParams
    score_ids: list[tuple[str, int]]


def _sampling_classes():
    """LogitsProcessor / StoppingCriteria subclasses, built on first use (lazy import)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    torch = require("torch")
    generation = require("transformers")

    class RowSampler(generation.LogitsProcessor):
        """Chooses every row's next token itself (greedy or seeded nucleus sampling) and
        returns scores that make ``generate``'s greedy step pick exactly that token. Keeps the
        log-softmax of the first step's raw scores."""

        def __init__(self, params: list[SamplingParams], generators: list[Any], prompt_len: int, keep_first: bool):
            self.params = params
            self.generators = generators
            self.prompt_len = prompt_len
            self.keep_first = keep_first
            self.first_logprobs = None

        def __call__(self, input_ids, scores):
            scores = scores.float()
            if self.keep_first and input_ids.shape[1] == self.prompt_len:
                self.first_logprobs = torch.log_softmax(scores, dim=-1)
            chosen = torch.argmax(scores, dim=-1)
            for r, p in enumerate(self.params):
                if p.temperature > 0:
                    probs = torch.softmax(scores[r] / p.temperature, dim=-1)
                    if p.top_p < 1.0:
                        sorted_probs, order = torch.sort(probs, descending=True)
                        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
                        sorted_probs = torch.where(before < p.top_p, sorted_probs, torch.zeros_like(sorted_probs))
                        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
                    chosen[r] = torch.multinomial(probs, 1, generator=self.generators[r])[0]
            forced = torch.full_like(scores, float("-inf"))
            forced.scatter_(1, chosen.unsqueeze(1), 0.0)
            return forced

    class RowMaxTokens(generation.StoppingCriteria):
        """Row r is done once it has ``max_tokens[r]`` new tokens."""

        def __init__(self, max_tokens: list[int], prompt_len: int):
            self.max_tokens = max_tokens
            self.prompt_len = prompt_len

        def __call__(self, input_ids, scores, **kwargs):
            n = input_ids.shape[1] - self.prompt_len
            return torch.tensor([n >= m for m in self.max_tokens], device=input_ids.device)

    _CLASSES = (RowSampler, RowMaxTokens)
    return _CLASSES


_CLASSES: tuple | None = None


def model_endpoint(config: ModelConfig) -> str:
    """The request-cache identity of a local model: path, GGUF file and a non-default dtype
    (the device does not change the answers)."""
    endpoint = f"transformers|{config.model}"
    if config.gguf_file:
        endpoint += f"|{config.gguf_file}"
    if config.dtype != "float32":
        endpoint += f"|{config.dtype}"
    return endpoint


class TransformersBackend:
    """``ChatBackend`` over a local transformers causal LM (see the module doc)."""

    def __init__(self, model: Any, tokenizer: Any, *, endpoint: str = "transformers|local",
                 batch_size: int = 8, lock: threading.RLock | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.endpoint = endpoint
        self.batch_size = max(1, int(batch_size))
        self.lock = lock or threading.RLock()
        self.stop_ids = stop_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.stop_ids[0]
        self._score_ids: dict[str, list[tuple[str, int]]] = {}

    @classmethod
    def from_config(cls, config: ModelConfig) -> TransformersBackend:
        entry = load_model(config.model, config.gguf_file, config.dtype, config.device, "causal_lm")
        return cls(entry.model, entry.tokenizer, endpoint=model_endpoint(config), batch_size=config.batch_size, lock=entry.lock)

    def __repr__(self) -> str:
        return f"TransformersBackend(endpoint={self.endpoint!r}, batch_size={self.batch_size})"

    # -- public API ----------------------------------------------------------------------

    def complete(self, requests: Sequence[ChatRequest], on_result: OnResult) -> None:
        prepared: list[_Prepared] = []
        for i, req in enumerate(requests):
            try:
                prepared.append(self._prepare(i, req))
            except Exception as exc:  # noqa: BLE001 - one bad request fails alone
                on_result(i, self._error(exc))
        prepared.sort(key=lambda p: (p.params.max_tokens, len(p.ids)))
        for start in range(0, len(prepared), self.batch_size):
            batch = prepared[start : start + self.batch_size]
            for index, outcome in self._run_isolated(batch):
                on_result(index, outcome)

    # -- internals -----------------------------------------------------------------------

    def _error(self, exc: BaseException) -> BackendError:
        if isinstance(exc, BackendError):
            return BackendError(f"{self.endpoint}: {exc}")
        return BackendError(f"{self.endpoint}: {type(exc).__name__}: {exc}")

    def _prepare(self, index: int, req: ChatRequest) -> _Prepared:
        p = req.params
        if p.max_tokens < 1:
            raise BackendError(f"max_tokens must be at least 1, got {p.max_tokens}")
        if p.temperature < 0:
            raise BackendError(f"temperature must be non-negative, got {p.temperature}")
        if not 0.0 < p.top_p <= 1.0:
            raise BackendError(f"top_p must be in (0, 1], got {p.top_p}")
        ids = prompt_ids(self.tokenizer, req.message_dicts())
        if not ids:
            raise BackendError("the chat template produced an empty prompt")
        score_ids: list[tuple[str, int]] = []
        for s in p.score_tokens:
            if s not in self._score_ids:
                self._score_ids[s] = score_token_ids(self.tokenizer, s)
            score_ids.extend(self._score_ids[s])
        return _Prepared(index, ids, p, score_ids)

    def _run_isolated(self, batch: list[_Prepared]) -> list[tuple[int, ChatResult | BackendError]]:
        try:
            return list(zip([p.index for p in batch], self._run_batch(batch)))
        except Exception as exc:  # noqa: BLE001
            if len(batch) == 1:
                log.warning("%s: request %d failed: %s", self.endpoint, batch[0].index, exc)
                return [(batch[0].index, self._error(exc))]
            log.warning("%s: a batch of %d failed (%s); retrying one by one", self.endpoint, len(batch), exc)
            out: list[tuple[int, ChatResult | BackendError]] = []
            for p in batch:
                out.extend(self._run_isolated([p]))
            return out

    def _run_batch(self, batch: list[_Prepared]) -> list[ChatResult]:
        torch = require("torch")
        transformers = require("transformers")
        RowSampler, RowMaxTokens = _sampling_classes()
        device = self.model.device
        width = max(len(p.ids) for p in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for r, p in enumerate(batch):
            input_ids[r, width - len(p.ids):] = torch.tensor(p.ids, dtype=torch.long)
            attention[r, width - len(p.ids):] = 1
        params = [p.params for p in batch]
        generators = []
        for prm in params:
            g = torch.Generator(device=device)
            g.manual_seed(prm.seed if prm.seed is not None else random.SystemRandom().getrandbits(63))
            generators.append(g)
        keep_first = any(prm.top_logprobs > 0 or prm.score_tokens for prm in params)
        sampler = RowSampler(params, generators, width, keep_first)
        max_tokens = [prm.max_tokens for prm in params]
        config = transformers.GenerationConfig(
            max_new_tokens=max(max_tokens),
            do_sample=False,
            num_beams=1,
            eos_token_id=list(self.stop_ids),
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        with self.lock, torch.inference_mode():
            saved = self.model.generation_config
            # generate() fills unset fields from model.generation_config (repetition penalty,
            # ...): hand it a neutral one so only SamplingParams count.
            self.model.generation_config = transformers.GenerationConfig(
                bos_token_id=getattr(saved, "bos_token_id", None),
                eos_token_id=list(self.stop_ids),
                pad_token_id=self.pad_id,
            )
            try:
                out = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    generation_config=config,
                    logits_processor=transformers.LogitsProcessorList([sampler]),
                    stopping_criteria=transformers.StoppingCriteriaList([RowMaxTokens(max_tokens, width)]),
                )
            finally:
                self.model.generation_config = saved
        new_tokens = out[:, width:].tolist()
        first = sampler.first_logprobs
        results = []
        stops = set(self.stop_ids)
        for r, p in enumerate(batch):
            tokens: list[int] = []
            finish = "length"
            for tok in new_tokens[r][: p.params.max_tokens]:
                tokens.append(int(tok))
                if tok in stops:
                    finish = "stop"
                    break
            text_ids = tokens[:-1] if finish == "stop" else tokens
            text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
            logprobs = self._first_token_logprobs(first[r], p) if first is not None else {}
            results.append(ChatResult(
                text=text,
                prompt_tokens=len(p.ids),
                completion_tokens=len(tokens),
                cached_prompt_tokens=0,
                finish_reason=finish,
                first_token_logprobs=logprobs,
            ))
        return results

    def _first_token_logprobs(self, row, p: _Prepared) -> dict[str, float]:
        torch = require("torch")
        out: dict[str, float] = {}
        k = min(int(p.params.top_logprobs), row.shape[-1])
        if k > 0:
            values, ids = torch.topk(row, k)
            for v, i in zip(values.tolist(), ids.tolist()):
                out.setdefault(self.tokenizer.decode([i]), float(v))
        for key, tid in p.score_ids:
            out[key] = float(row[tid])
        return out


@register_backend("transformers", "local transformers causal LM (hub id, folder or GGUF): batched, seeded, exact score-token logprobs")
def _factory(config: ModelConfig) -> TransformersBackend:
    return TransformersBackend.from_config(config)
