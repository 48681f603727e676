"""Algorithm 1 of seed 004 on the run store: one run = one acquisition and one seed.

Round t (1..T), policy θ_{t-1} (θ₀ in round 1):

1. ``sampled``: draw S prompts (J·S for ``hybrid``) among those not labelled in earlier
   rounds; sample 2 completions each from θ_{t-1} (N for ``entropy``/``hybrid``), score
   log θ_{t-1}(y|x) for every sample and log θ₀(y|x) for the first two.
2. ``selected``: rank by the acquisition (:mod:`activepref.apl.scores`) and keep the top M.
3. ``labelled``: the judge says which of the two completions is better (ties and failures are
   recorded and not trained on).
4. ``trained``: DPO with TRL on every label so far from θ₀ (``dpo.reinit``, as in 004), or
   on this round's labels from θ_{t-1} (the online variant of 004 App. D); the policy is
   saved as ``policy/round-t.safetensors`` (the previous round's file is then removed).
5. ``evaluated``: win rate of θ_t against θ₀ on the held-out prompts, both sampled with the
   same seed per prompt, judged by the same judge.

Random draws come from (seed, stage, round[, prompt, sample]) only, so all acquisitions of
one seed see the same first-round prompts and samples (common random numbers), and a resumed
run repeats exactly what an uninterrupted one does. Generations and judge calls go through
the shared request cache: a crash repeats no finished call.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from activepref.apl.acquisitions import ACQUISITIONS, RoundScores
from activepref.apl.config import APLConfig
from activepref.apl.policy import dpo_finetune, dpo_rows, load_checkpoint, save_checkpoint, trainable_copy
from activepref.apl.referee import Referee
from activepref.apl.scores import (
    certainty,
    completion_ids,
    completion_logprob_sums,
    generated_length,
    implicit_rewards,
    predictive_entropy,
)
from activepref.apl.store import APLStore, EvalRow, LabelRow, PickRow, SampleRow
from activepref.backends import make_backend
from activepref.backends.base import BackendError, ChatRequest, ChatResult, SamplingParams
from activepref.backends.transformers_local import TransformersBackend, load_model, model_endpoint
from activepref.core.cache import CachedBackend, RequestCache
from activepref.core.determinism import Stage, crash_point, stage_rng, stage_seed, text_key
from activepref.errors import ActivePrefError
from activepref.pools.records import Prompt

# Fields that do not change what a run computes: more seeds or acquisitions add runs, more
# rounds extend a run, the cache and thread count change nothing in the results.
NOT_IDENTITY = {"acquisitions", "seeds", "rounds", "cache_path", "threads"}
# How random draws are made (core.determinism's Stage table); a run made under another
# scheme would continue with different draws, so it is refused instead.
DRAW_SCHEME = "stage_rng-1"


def run_identity(config: APLConfig, train: Sequence[Prompt], held_out: Sequence[Prompt]) -> str:
    """What each run store records and checks on reopening: the config (less NOT_IDENTITY) and
    a digest of the training and held-out prompts (ids and texts), so that an edited prompt
    file -- which would also move the held-out split -- is refused instead of mixed in."""
    digest = hashlib.sha256()
    for part, prompts in (("train", train), ("held_out", held_out)):
        for p in prompts:
            digest.update(json.dumps([part, p.id, p.text, list(p.messages)], ensure_ascii=False).encode())
    return json.dumps(
        {"config": json.loads(config.model_dump_json(exclude=NOT_IDENTITY)), "prompts": digest.hexdigest(), "draws": DRAW_SCHEME},
        sort_keys=True,
    )


@dataclass
class APLParts:
    """What every run of one ``apl`` invocation shares: θ₀ (never trained), its tokenizer,
    the judge and the request cache."""

    config: APLConfig
    tokenizer: Any
    theta0: Any
    theta0_endpoint: str
    referee: Referee
    cache: RequestCache


def load_parts(config: APLConfig, cache: RequestCache) -> APLParts:
    pc = config.policy
    entry = load_model(pc.model, pc.gguf_file, pc.dtype, pc.device, "causal_lm")
    endpoint = model_endpoint(pc)
    theta0 = trainable_copy(entry.model)
    referee = Referee(config.judge, make_backend(config.judge.model), cache)
    return APLParts(config, entry.tokenizer, theta0, endpoint, referee, cache)


@dataclass
class RoundResult:
    acquisition: str
    seed: int
    round: int
    labels: int
    label_ties: int
    label_failures: int
    win_rate: float | None
    wins: int
    losses: int
    ties: int
    failures: int
    n_eval: int
    extra: dict[str, Any] = field(default_factory=dict)


StageCallback = Callable[[str, int, int, str], None]  # (acquisition, seed, round, stage)


class APLRun:
    """One (acquisition, seed) run in ``run_dir``; :meth:`run` does or resumes every round."""

    def __init__(
        self, parts: APLParts, train: Sequence[Prompt], held_out: Sequence[Prompt], acquisition: str, seed: int,
        run_dir: str | Path, on_stage: StageCallback | None = None,
    ) -> None:
        self.parts = parts
        self.config = parts.config
        self.train = list(train)
        self.held_out = list(held_out)
        self.by_id = {p.id: p for p in self.train}
        self.acquisition = acquisition
        self.seed = seed
        self.run_dir = Path(run_dir)
        self.on_stage = on_stage or (lambda *a: None)
        self._prev: dict[int, Any] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _checkpoint(self, round_: int) -> Path:
        return self.run_dir / "policy" / f"round-{round_}.safetensors"

    def _policy_after(self, round_: int) -> Any:
        """θ_round (θ₀ for round 0), loaded from its checkpoint."""
        if round_ == 0:
            return self.parts.theta0
        return load_checkpoint(self.parts.theta0, self._checkpoint(round_))

    def _previous(self, round_: int) -> Any:
        """θ_{round-1}, loaded once per round (only when a stage of the round needs it)."""
        if round_ not in self._prev:
            self._prev = {round_: self._policy_after(round_ - 1)}
        return self._prev[round_]

    def _endpoint(self, store: APLStore, round_: int) -> str:
        return self.parts.theta0_endpoint if round_ == 0 else f"apl|{store.uid}|theta{round_}"

    def _generate(self, policy: Any, endpoint: str, requests: list[ChatRequest], stage: str) -> list[ChatResult]:
        backend = TransformersBackend(policy, self.parts.tokenizer, endpoint=endpoint, batch_size=self.config.policy.batch_size)
        results: dict[int, ChatResult | BackendError] = {}
        CachedBackend(backend, self.parts.cache, stage).complete(requests, results.__setitem__)
        out = []
        for i in range(len(requests)):
            res = results.get(i)
            if not isinstance(res, ChatResult):
                raise ActivePrefError(f"the policy failed to generate ({endpoint}): {res}")
            out.append(res)
        return out

    def _logprobs(
        self, model: Any, messages: list[list[dict[str, str]]], texts: list[str], stopped: list[bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(log p of each templated completion, as DPO sees it; with ``stopped``, also log p of
        the tokens the model generated itself, for the entropy)."""
        tok = self.parts.tokenizer
        seqs = [completion_ids(tok, m, t) for m, t in zip(messages, texts)]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        lengths = None if stopped is None else [generated_length(tok, m, comp, s) for m, (_, comp), s in zip(messages, seqs, stopped)]
        full, generated = completion_logprob_sums(model, seqs, self.config.scoring_batch_size, pad, lengths)
        return full, (None if stopped is None else generated)

    # -- stages ----------------------------------------------------------------------------
    def _sample(self, store: APLStore, round_: int, policy: Any) -> None:
        cfg = self.config
        taken = store.labelled_prompt_ids()
        available = [p for p in self.train if p.id not in taken]
        if not available:
            raise ActivePrefError(f"round {round_}: every training prompt has been labelled; use fewer rounds")
        acq = ACQUISITIONS.get(self.acquisition)
        factor = cfg.hybrid_factor if acq.oversample else 1
        n_samples = cfg.entropy_samples if acq.many_samples else 2
        order = stage_rng(self.seed, round_, Stage.APL_PROMPTS).permutation(len(available))
        chosen = [available[int(i)] for i in order[: cfg.prompts_per_round * factor]]
        requests, owners = [], []
        for prompt in chosen:
            for n in range(n_samples):
                params = SamplingParams(
                    temperature=cfg.temperature, top_p=1.0, max_tokens=cfg.max_tokens,
                    seed=stage_seed(self.seed, round_, Stage.APL_SAMPLE, text_key(prompt.id), n),
                )
                requests.append(ChatRequest.from_messages(prompt.conversation(), params))
                owners.append((prompt, n))
        results = self._generate(policy, self._endpoint(store, round_ - 1), requests, "generate")
        messages = [p.conversation() for p, _ in owners]
        texts = [r.text for r in results]
        logp, gen_logp = self._logprobs(policy, messages, texts, [r.finish_reason == "stop" for r in results])
        assert gen_logp is not None
        pair_idx = [j for j, (_, n) in enumerate(owners) if n < 2]
        if policy is self.parts.theta0:
            ref = logp.copy()
        else:
            ref = np.full(len(owners), np.nan)
            ref[pair_idx] = self._logprobs(self.parts.theta0, [messages[j] for j in pair_idx], [texts[j] for j in pair_idx])[0]
        rows = [
            SampleRow(p.id, n, r.text, r.finish_reason, float(logp[j]), float(gen_logp[j]), float(ref[j]) if n < 2 else None)
            for j, ((p, n), r) in enumerate(zip(owners, results))
        ]
        store.commit_samples(round_, rows)

    def _select(self, store: APLStore, round_: int) -> None:
        cfg = self.config
        samples = store.samples(round_)
        pids = list(samples)
        n_min = min(len(v) for v in samples.values())
        logp = np.array([[s["logp"] for s in samples[p][:2]] for p in pids])
        gen_logp = np.array([[s["gen_logp"] for s in samples[p][:n_min]] for p in pids])
        ref = np.array([[s["ref_logp"] for s in samples[p][:2]] for p in pids], dtype=np.float64)
        ent = predictive_entropy(gen_logp)
        cert = certainty(implicit_rewards(logp[:, :2], ref, cfg.dpo.beta))
        rng = stage_rng(self.seed, round_, Stage.APL_SELECT)
        idx, score = ACQUISITIONS.get(self.acquisition).select(RoundScores(ent, cert, cfg.prompts_per_round), cfg.labels_per_round, rng)
        rows = [
            PickRow(pids[i], float(ent[i]) if n_min > 2 else None, float(cert[i]), None if score is None else float(score[i]))
            for i in idx
        ]
        store.commit_picks(round_, rows)

    def _label(self, store: APLStore, round_: int) -> None:
        picks = store.picks(round_)
        samples = store.samples(round_)
        prompts = [self.by_id[p["prompt_id"]] for p in picks]
        pairs = [(samples[p["prompt_id"]][0]["text"], samples[p["prompt_id"]][1]["text"]) for p in picks]
        verdicts = self.parts.referee.compare(prompts, pairs, seed=self.seed)
        crash_point("apl-judged", round_)  # answers cached, labels not committed yet
        rows: list[LabelRow] = []
        for pick, v in zip(picks, verdicts):
            chosen, rejected = (v.winner, 1 - v.winner) if v.winner is not None else (None, None)
            rows.append(LabelRow(pick["prompt_id"], chosen, rejected, v.outcome, v.detail))
        store.commit_labels(round_, rows)

    def _train(self, store: APLStore, round_: int, previous: Callable[[], Any]) -> Any:
        cfg = self.config
        pairs = []
        cached_samples: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for lab in store.labels(up_to_round=round_):
            if lab["outcome"] != "ok" or (not cfg.dpo.reinit and lab["round"] != round_):
                continue
            s = cached_samples.setdefault(lab["round"], store.samples(lab["round"]))[lab["prompt_id"]]
            pairs.append((self.by_id[lab["prompt_id"]].conversation(), s[lab["chosen"]]["text"], s[lab["rejected"]]["text"]))
        start = self.parts.theta0 if cfg.dpo.reinit else previous()
        if pairs:
            trained, metrics = dpo_finetune(
                start, self.parts.theta0, self.parts.tokenizer, dpo_rows(pairs), cfg.dpo,
                seed=stage_seed(self.seed, round_, Stage.APL_TRAIN), workdir=self.run_dir / "trainer",
                on_step=lambda step: crash_point("apl-train.mid", round_) if step == 1 else None,
            )
        else:
            trained, metrics = start, {"steps": 0, "pairs": 0, "note": "no usable label yet: policy unchanged"}
        save_checkpoint(trained, self._checkpoint(round_))
        crash_point("apl-checkpoint-written", round_)
        store.commit_training(round_, metrics)
        return trained

    def _evaluate(self, store: APLStore, round_: int, policy: Any) -> None:
        cfg = self.config
        requests = [
            ChatRequest.from_messages(
                p.conversation(),
                SamplingParams(
                    temperature=cfg.eval_temperature, top_p=1.0, max_tokens=cfg.max_tokens,
                    seed=stage_seed(self.seed, 0, Stage.APL_EVAL_SAMPLE, text_key(p.id)),
                ),
            )
            for p in self.held_out
        ]
        reference = self._generate(self.parts.theta0, self.parts.theta0_endpoint, requests, "evaluate")
        current = self._generate(policy, self._endpoint(store, round_), requests, "evaluate")
        pairs = [(c.text, r.text) for c, r in zip(current, reference)]
        verdicts = self.parts.referee.compare(self.held_out, pairs, seed=self.seed)
        crash_point("apl-eval-judged", round_)
        rows: list[EvalRow] = []
        for p, c, v in zip(self.held_out, current, verdicts):
            outcome = None if v.outcome == "failure" else (0.5 if v.winner is None else float(v.winner == 0))
            rows.append(EvalRow(p.id, c.text, outcome, v.detail))
        store.commit_evals(round_, rows)

    # -- driver ----------------------------------------------------------------------------
    def run(self) -> list[RoundResult]:
        cfg = self.config
        with APLStore.open_or_create(self.run_dir, run_identity(cfg, self.train, self.held_out), self.acquisition, self.seed) as store:
            for t in range(1, cfg.rounds + 1):
                if store.done(t, "evaluated"):
                    continue
                if not store.done(t, "sampled"):
                    self.on_stage(self.acquisition, self.seed, t, "sampling")
                    self._sample(store, t, self._previous(t))
                    crash_point("apl-sampled", t)
                if not store.done(t, "selected"):
                    self._select(store, t)
                    crash_point("apl-selected", t)
                if not store.done(t, "labelled"):
                    self.on_stage(self.acquisition, self.seed, t, "labelling")
                    self._label(store, t)
                    crash_point("apl-labelled", t)
                if not store.done(t, "trained"):
                    self.on_stage(self.acquisition, self.seed, t, "training")
                    trained = self._train(store, t, functools.partial(self._previous, t))
                    crash_point("apl-trained", t)
                else:
                    trained = self._policy_after(t)
                self._prev = {t + 1: trained}  # θ_t samples round t+1: no need to read its checkpoint back
                old = self._checkpoint(t - 1)
                if t > 1 and old.exists():
                    old.unlink()
                self.on_stage(self.acquisition, self.seed, t, "evaluating")
                self._evaluate(store, t, trained)
                crash_point("apl-evaluated", t)
            return self.results(store)

    def results(self, store: APLStore) -> list[RoundResult]:
        out = []
        labels = store.labels()
        for t in range(1, self.config.rounds + 1):
            upto = [lab["outcome"] for lab in labels if lab["round"] <= t]
            evals = store.evals(t)
            scored = [e["outcome"] for e in evals if e["outcome"] is not None]
            out.append(RoundResult(
                acquisition=self.acquisition, seed=self.seed, round=t, labels=upto.count("ok"), label_ties=upto.count("tie"),
                label_failures=upto.count("failure"), win_rate=float(np.mean(scored)) if scored else None,
                wins=sum(o == 1.0 for o in scored), losses=sum(o == 0.0 for o in scored),
                ties=sum(o == 0.5 for o in scored), failures=len(evals) - len(scored), n_eval=len(evals),
                extra={"training": store.training(t)},
            ))
        return out
