"""The acquisition registry: method name -> proposal function, plus ``available()``.

Add a method by writing ``propose(batch, rng, **options) -> Proposal`` in the module of
its family (or in a plugin, see ``activepref.plugins``) and decorating it with
``@register("name", "one-line description")``; a batch design uses ``@register_design``.
Options are keyword arguments with defaults; the config's ``method_options`` fills them.
``REGISTRY`` is an ``activepref.registry.Registry`` of :class:`Method` entries.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, create_model, model_validator

from activepref.acquisition.base import (
    CandidateBatch,
    PairRule,
    Proposal,
    ResolvedPairs,
    lcb_preference_prob,
    resolve_pairs,
    ucb_preference_prob,
)
from activepref.errors import ConfigError
from activepref.registry import Registry

ProposeFn = Callable[..., Proposal]

# What a batch design may ask the loop for beyond the per-head rewards, the candidates'
# prompts and the candidate pairs (see comparisons.ComparisonSet): the loop builds only the
# inputs a design declares, since Φ and the labelled history cost an ENN pass and an
# einsum over every labelled pair per iteration.
DESIGN_INPUTS = frozenset({"phi", "past_information", "past_differences", "prompt_features"})


@dataclass(frozen=True)
class Method:
    """A registered method. ``kind`` is ``per_prompt`` (``propose(batch, rng, **options) ->
    Proposal``: one pair per prompt), ``design`` (``propose(comparisons, budget, rng,
    **options) -> [budget] indices`` into ``comparisons.pairs``: a batch over all prompts) or
    ``model`` (``propose(model_batch, rng, **options) -> [b, M] bool``: which models generate
    for each prompt, before a per-prompt ``response_method`` picks the pair)."""

    name: str
    description: str
    propose: ProposeFn
    family: str
    uses_reward_model: bool
    kind: str = "per_prompt"
    inputs: frozenset[str] = frozenset()  # designs: the DESIGN_INPUTS it reads
    options_model: type[BaseModel] = field(default=BaseModel, compare=False)  # typed method_options
    needs_scores: bool = False  # its pair comes from the scores of more than two candidates (no pairwise judge)
    # the only models whose candidates it can ever pick, from its validated options (None: any
    # model); a live run asks only these to generate, and a run's bill counts only theirs
    generators: Callable[[Any], tuple[str, ...]] | None = field(default=None, compare=False)

    def options(self) -> dict[str, Any]:
        """Keyword options and their defaults (``inspect.Parameter.empty`` where required),
        read off the typed options model, which is built from the signature once."""
        return {
            name: inspect.Parameter.empty if info.is_required() else info.default
            for name, info in self.options_model.model_fields.items()
        }


REGISTRY: Registry[Method] = Registry("method")


OptionsCheck = Callable[[Any], None]


def options_model(fn: ProposeFn, positional: int, name: str, check: OptionsCheck | None = None) -> type[BaseModel]:
    """A pydantic model of ``fn``'s keyword options, built from its signature: each option's
    annotation is its type (``Annotated[int, Field(ge=1, description=...)]`` adds a constraint
    and the help ``activepref methods --verbose`` prints) and its default the default, so the
    function stays the one place an option is declared. ``check(options)`` is a rule across
    options (raise ValueError), run after the fields validate."""
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for p in list(inspect.signature(fn).parameters.values())[positional:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    validators: dict[str, Any] = {}
    if check is not None:
        def across_options(self: BaseModel) -> BaseModel:
            check(self)
            return self

        validators["across_options"] = model_validator(mode="after")(across_options)
    return create_model(
        f"{name}_options", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), __validators__=validators, **fields
    )


def register(
    name: str, description: str, *, uses_reward_model: bool = True, needs_scores: bool = False, check: OptionsCheck | None = None,
    generators: Callable[[Any], tuple[str, ...]] | None = None,
) -> Callable[[ProposeFn], ProposeFn]:
    """Decorator adding a proposal function to the registry under ``name``.

    ``needs_scores``: its pair is picked from the judge's scores of more than two candidates
    (rules ``best_vs_worst``/``best_vs_random``), so a judge that compares pairs cannot serve
    it. ``check(options)``: a rule across options, raising ValueError (see ``options_model``).
    ``generators(options)``: the models whose candidates it can pick, if it only ever looks at
    a fixed few (``delta_pair``'s strong and weak): the others then never generate."""

    def wrap(fn: ProposeFn) -> ProposeFn:
        family = fn.__module__.rsplit(".", 1)[-1]
        REGISTRY.add(Method(
            name, description, fn, family, uses_reward_model, options_model=options_model(fn, 2, name, check), needs_scores=needs_scores,
            generators=generators,
        ))
        return fn

    return wrap


def register_design(
    name: str, description: str, *, uses_reward_model: bool = True, inputs: frozenset[str] | set[str] = DESIGN_INPUTS,
    check: OptionsCheck | None = None,
) -> Callable[[ProposeFn], ProposeFn]:
    """Decorator adding a batch design (see ``comparisons.ComparisonSet``) to the registry.

    ``inputs``: the optional parts of the ComparisonSet it reads (``DESIGN_INPUTS``; default
    all of them). The loop leaves the others out: ``phi`` then has p = 0 columns, the
    history and prompt features are None."""
    unknown = sorted(set(inputs) - DESIGN_INPUTS)
    if unknown:
        raise ValueError(f"design {name!r}: unknown inputs {unknown}; choose from {sorted(DESIGN_INPUTS)}")

    def wrap(fn: ProposeFn) -> ProposeFn:
        family = fn.__module__.rsplit(".", 1)[-1]
        REGISTRY.add(Method(
            name, description, fn, family, uses_reward_model, kind="design", inputs=frozenset(inputs),
            options_model=options_model(fn, 3, name, check),
        ))
        return fn

    return wrap


def register_model_level(
    name: str, description: str, *, uses_reward_model: bool = True, check: OptionsCheck | None = None
) -> Callable[[ProposeFn], ProposeFn]:
    """Decorator adding a model-level method (kind ``model``: ``propose(model_batch, rng,
    **options) -> [b, M] bool``, which models generate for each prompt; see
    ``acquisition.model_level``). Its options include ``response_method``, the per-prompt
    method that then picks the pair among the generated candidates."""

    def wrap(fn: ProposeFn) -> ProposeFn:
        family = fn.__module__.rsplit(".", 1)[-1]
        REGISTRY.add(Method(name, description, fn, family, uses_reward_model, kind="model", options_model=options_model(fn, 2, name, check)))
        return fn

    return wrap


def method_generators(name: str, options: dict[str, Any]) -> frozenset[str] | None:
    """The only models method ``name`` with ``options`` can take candidates from (None: any).
    A model-level method answers for its ``response_method`` (which picks among what the
    chosen models generated)."""
    method = get_method(name)
    if method.kind == "model":
        response = str(options.get("response_method", method.options().get("response_method")))
        return method_generators(response, dict(options.get("response_options") or {}))
    if method.generators is None:
        return None
    return frozenset(method.generators(method.options_model(**options)))


def available() -> list[Method]:
    """Every registered method (built-in, then plugins'), in registration order."""
    return REGISTRY.available()


def get_method(name: str) -> Method:
    """The registered method, or ConfigError listing the known names."""
    return REGISTRY.get(name)


@dataclass(frozen=True)
class OptionRow:
    """One method option as ``activepref methods --verbose`` prints it."""

    method: str
    option: str
    type: str
    default: str
    constraints: str
    help: str


def option_rows() -> list[OptionRow]:
    """Every option of every registered method, from its typed options model."""
    rows = []
    for m in available():
        for name, info in m.options_model.model_fields.items():
            default = "required" if info.is_required() else repr(info.default)
            rows.append(OptionRow(m.name, name, _type_text(info.annotation), default, _limits_text(info.metadata), info.description or ""))
    return rows


def _type_text(annotation: Any) -> str:
    """int, float | None, 'gradient' | 'greedy' ..."""
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(v) for v in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >="), ("max_length", "length <="))


def _limits_text(metadata: list[Any]) -> str:
    """Field constraints (annotated_types objects) as '>= 1', '> 0', ..."""
    parts = []
    for item in metadata:
        for attr, sign in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def make_selector(name: str, options: dict[str, Any] | None = None) -> Callable[[CandidateBatch, np.random.Generator], Proposal]:
    """Bind a method's options, rejecting unknown ones with the list of valid names."""
    method = get_method(name)
    options = dict(options or {})
    known = method.options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        valid = ", ".join(known) or "none"
        raise ConfigError(f"method_options: {', '.join(unknown)} not an option of {name!r} (valid: {valid})")
    missing = [k for k, v in known.items() if v is inspect.Parameter.empty and k not in options]
    if missing:
        raise ConfigError(f"method_options: {name!r} needs {', '.join(repr(m) for m in missing)}")
    try:
        typed = method.options_model.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(_option_problem(e) for e in exc.errors())
        raise ConfigError(f"{problems} (method {name!r})") from None
    return functools.partial(method.propose, **{k: getattr(typed, k) for k in options})


def _option_problem(error: Any) -> str:
    """One pydantic error as 'method_options.<option>: message (got value)'; a rule across
    options (no location) as 'method_options: message'."""
    msg = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return f"method_options: {msg}"
    return f"method_options.{'.'.join(map(str, error['loc']))}: {msg} (got {error.get('input')!r:.60})"


# Families register themselves on import; keep this list in sync with the modules.
from activepref.acquisition import pairwise  # noqa: E402,F401,I001
from activepref.acquisition import bandits  # noqa: E402,F401
from activepref.acquisition import designs  # noqa: E402,F401
from activepref.acquisition import bayesian  # noqa: E402,F401
from activepref.acquisition import upstream  # noqa: E402,F401
from activepref.acquisition import model_level  # noqa: E402,F401

__all__ = [
    "DESIGN_INPUTS",
    "REGISTRY",
    "CandidateBatch",
    "Method",
    "PairRule",
    "Proposal",
    "ResolvedPairs",
    "available",
    "method_generators",
    "get_method",
    "lcb_preference_prob",
    "make_selector",
    "option_rows",
    "register",
    "register_model_level",
    "resolve_pairs",
    "ucb_preference_prob",
]
