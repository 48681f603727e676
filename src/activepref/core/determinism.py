"""Where every random draw of a run comes from, and the crash hook of the kill tests.

A draw is made by the generator of one *stage* of one step: ``stage_rng(seed, step, stage,
*keys)`` is ``numpy``'s generator over ``SeedSequence([seed, step, stage, *keys])``. It
depends on nothing that ran before it, so a run killed anywhere and resumed makes exactly the
draws of an uninterrupted one, and two runs that share a seed share every draw that does not
depend on what they chose (common random numbers across methods).

:class:`Stage` is the single table of stages, for the main loop and for APL alike. The values
are part of every stored run's identity: never renumber one, only add new ones.
"""

from __future__ import annotations

import hashlib
import os
import signal
from enum import IntEnum

import numpy as np

CRASH_ENV = "ACTIVEPREF_CRASH_AT"  # test hook: "<point>" or "<point>@<step>" -> SIGKILL self


class Stage(IntEnum):
    """Every stage that draws random numbers (the third entropy word of its generator)."""

    SELECT = 1  # acquisition: the method's own draws (tie breaks, Thompson samples, ...)
    RESOLVE = 2  # turning judge scores into a pair (UltraFeedback's random 'other')
    TRAIN = 3  # ENN: training-set subsample and minibatches
    INIT = 4  # ENN: initial weights and prior networks
    SPLIT = 5  # held-out prompts and the annotation order of the rest
    GENERATE = 6  # live runs: principles, system prompts and request seeds of the candidates
    MONITOR = 7  # the sample of held-out prompts the ENN is scored on every iteration
    PAIR_ORDER = 8  # pairwise judges: which response is shown first (keys: the two response ids)
    LABEL_NOISE = 9  # simulated label noise of a judge (keys: the response id)
    POOL_INSTRUCTIONS = 10  # building a pool: the verifiable instructions of each prompt (keys: its source id)
    MODEL_SELECT = 11  # model-level acquisition: the method's draws (Thompson heads, exploration)
    MODEL_INIT = 12  # model-level reward model: initial weights (fresh each iteration)
    MODEL_TRAIN = 13  # model-level reward model: minibatches
    APL_PROMPTS = 101  # APL: which unlabelled prompts a round samples
    APL_SAMPLE = 102  # APL: request seed of each completion (keys: prompt id, sample number)
    APL_SELECT = 103  # APL: tie breaks and the random acquisition
    APL_TRAIN = 104  # APL: DPO's data order and dropout
    APL_EVAL_SAMPLE = 105  # APL: request seed of the held-out completions (keys: prompt id)
    APL_EVAL_SPLIT = 106  # APL: which prompts are held out when no eval file is given


def text_key(text: str) -> int:
    """A stable 64-bit integer for a string key (a prompt or response id) of a generator:
    the first 8 bytes of its SHA-256, the same in every process and Python version."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def stage_rng(seed: int, step: int, stage: int, *keys: int) -> np.random.Generator:
    """The generator of one stage of one step (iteration or round), optionally narrowed to
    one item by integer ``keys`` (use :func:`text_key` for ids)."""
    return np.random.default_rng(np.random.SeedSequence([seed, step, int(stage), *keys]))


def stage_seed(seed: int, step: int, stage: int, *keys: int) -> int:
    """A 31-bit integer seed from the same entropy as :func:`stage_rng`, for libraries that
    take an integer (request ``seed`` fields, ``transformers.set_seed``)."""
    state = np.random.SeedSequence([seed, step, int(stage), *keys]).generate_state(1, dtype=np.uint32)
    return int(state[0]) & 0x7FFFFFFF


def crash_point(name: str, step: int) -> None:
    """Kill this process with SIGKILL when the test hook names this point (crash tests)."""
    target = os.environ.get(CRASH_ENV)
    if target and target in (name, f"{name}@{step}"):
        os.kill(os.getpid(), signal.SIGKILL)
