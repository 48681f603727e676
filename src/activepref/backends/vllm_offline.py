"""Backend ``vllm``: vLLM's offline engine (``vllm.LLM``) in this process. CUDA only.

Same contract as the ``transformers`` backend (see ``transformers_local``):

- prompts are the tokenizer's chat template with ``add_generation_prompt=True``, rendered here
  per request (a request whose template fails fails alone) and handed to ``LLM.generate`` as
  token ids (``{"prompt_token_ids": ...}``);
- ``temperature``, ``top_p``, ``max_tokens`` and ``seed`` map one to one onto
  ``vllm.SamplingParams`` (vLLM seeds a generator per request, so a seeded request does not
  depend on its batch mates); the model's generation config contributes only its EOS ids,
  as in vLLM whenever explicit sampling parameters are given;
- first-token log-probabilities are vLLM's raw log-softmax (its default ``raw_logprobs``
  mode): ``logprobs=top_logprobs``, and, when ``score_tokens`` are asked for, ``logprobs=-1``
  (the whole vocabulary, detokenised by vLLM at every generated position: cheap for a judge's
  ``max_tokens=1``, costly for long generations) so that every score token is exact. The engine
  is built with ``max_logprobs=-1`` to allow that. (Recent vLLM's ``logprob_token_ids`` would be
  cheaper but cannot be combined with a top-k list.) Score strings map to token ids exactly as
  in the transformers backend.
- requests go to ``LLM.generate`` in chunks of ``batch_size`` (set it large, e.g. 256: vLLM
  batches internally; each chunk's results are reported as soon as the chunk returns). A chunk
  that raises is re-run one request at a time so that a bad request fails alone.

The engine is cached per process under ``(model, gguf_file, dtype)``. With ``gguf_file`` the
engine loads ``model/gguf_file`` and takes the tokenizer from the folder when it holds one
(``tokenizer_config.json``), else from the GGUF file.
``dtype`` is passed through (``float32`` works but is slow on a GPU: prefer ``auto`` or
``bfloat16``); ``device`` is ignored (vLLM picks its own).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from activepref.backends import register_backend
from activepref.backends.base import BackendError, ChatRequest, ChatResult, OnResult, SamplingParams
from activepref.backends.transformers_local import prompt_ids, score_token_ids
from activepref.extras import require

if TYPE_CHECKING:
    from activepref.config import ModelConfig

log = logging.getLogger(__name__)

_ENGINES: dict[tuple, Any] = {}
_ENGINES_LOCK = threading.Lock()


def load_engine(model: str, gguf_file: str | None = None, dtype: str = "auto", seed: int = 0) -> Any:
    vllm = require("vllm")
    key = (str(model), gguf_file, str(dtype))
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            kwargs: dict[str, Any] = {"dtype": dtype, "seed": seed, "max_logprobs": -1}
            if gguf_file:
                # the folder's own tokenizer when it has one, else vLLM reads the GGUF's
                has_tokenizer = os.path.isfile(os.path.join(model, "tokenizer_config.json"))
                _ENGINES[key] = vllm.LLM(model=os.path.join(model, gguf_file),
                                         tokenizer=model if has_tokenizer else None, **kwargs)
            else:
                _ENGINES[key] = vllm.LLM(model=model, **kwargs)
        return _ENGINES[key]


class VLLMBackend:
    def __init__(self, llm: Any, *, endpoint: str, batch_size: int = 256) -> None:
        self.llm = llm
        self.endpoint = endpoint
        self.batch_size = max(1, int(batch_size))
        self.tokenizer = llm.get_tokenizer()
        self._score_ids: dict[str, list[tuple[str, int]]] = {}

    @classmethod
    def from_config(cls, config: ModelConfig) -> VLLMBackend:
        llm = load_engine(config.model, config.gguf_file, config.dtype)
        endpoint = f"vllm|{config.model}" + (f"|{config.gguf_file}" if config.gguf_file else "")
        return cls(llm, endpoint=endpoint, batch_size=config.batch_size)

    def complete(self, requests: Sequence[ChatRequest], on_result: OnResult) -> None:
        prepared = []
        for i, req in enumerate(requests):
            try:
                prepared.append(self._prepare(i, req))
            except Exception as exc:  # noqa: BLE001
                on_result(i, self._error(exc))
        for start in range(0, len(prepared), self.batch_size):
            for index, outcome in self._run_isolated(prepared[start : start + self.batch_size]):
                on_result(index, outcome)

    def _error(self, exc: BaseException) -> BackendError:
        return BackendError(f"{self.endpoint}: {type(exc).__name__}: {exc}")

    def _prepare(self, index: int, req: ChatRequest):
        vllm = require("vllm")
        p: SamplingParams = req.params
        ids = prompt_ids(self.tokenizer, req.message_dicts())
        score_ids: list[tuple[str, int]] = []
        for s in p.score_tokens:
            if s not in self._score_ids:
                self._score_ids[s] = score_token_ids(self.tokenizer, s)
            score_ids.extend(self._score_ids[s])
        logprobs = None
        if p.score_tokens:
            logprobs = -1
        elif p.top_logprobs > 0:
            logprobs = p.top_logprobs
        sp = vllm.SamplingParams(
            temperature=p.temperature,
            top_p=p.top_p,
            max_tokens=p.max_tokens,
            seed=p.seed,
            logprobs=logprobs,
        )
        return index, ids, p, score_ids, sp

    def _run_isolated(self, chunk) -> list[tuple[int, ChatResult | BackendError]]:
        try:
            outputs = self.llm.generate([{"prompt_token_ids": ids} for _, ids, _, _, _ in chunk],
                                        [sp for *_, sp in chunk], use_tqdm=False)
            return [(item[0], self._result(item, out)) for item, out in zip(chunk, outputs)]
        except Exception as exc:  # noqa: BLE001
            if len(chunk) == 1:
                return [(chunk[0][0], self._error(exc))]
            log.warning("%s: a chunk of %d failed (%s); retrying one by one", self.endpoint, len(chunk), exc)
            out: list[tuple[int, ChatResult | BackendError]] = []
            for item in chunk:
                out.extend(self._run_isolated([item]))
            return out

    def _result(self, item, output) -> ChatResult:
        _, ids, p, score_ids, _ = item
        comp = output.outputs[0]
        first: dict[str, float] = {}
        if comp.logprobs and (p.top_logprobs > 0 or score_ids):
            position = comp.logprobs[0]  # dict[token id, Logprob]
            ranked = sorted(position.items(), key=lambda kv: kv[1].logprob, reverse=True)
            for tid, lp in ranked[: p.top_logprobs]:
                key = lp.decoded_token if lp.decoded_token is not None else self.tokenizer.decode([tid])
                first.setdefault(key, float(lp.logprob))
            for key, tid in score_ids:
                if tid in position:
                    first[key] = float(position[tid].logprob)
        return ChatResult(
            text=comp.text,
            prompt_tokens=len(output.prompt_token_ids or ids),
            completion_tokens=len(comp.token_ids),
            cached_prompt_tokens=int(getattr(output, "num_cached_tokens", 0) or 0),
            finish_reason=comp.finish_reason,
            first_token_logprobs=first,
        )


@register_backend("vllm", "vLLM offline engine in this process (CUDA): batched, seeded, exact score-token logprobs")
def _factory(config: ModelConfig) -> VLLMBackend:
    return VLLMBackend.from_config(config)
