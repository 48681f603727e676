"""The run configuration: pydantic models, the only place defaults live.

Defaults follow 001 (Tables 14-16) except where noted. A YAML file is optional;
command-line flags override it field by field. Loading a config imports neither torch nor any
optional extra: the names of methods, judges, backends and embedders are checked against their
registries (``activepref.registry``), whose heavy modules load only when a run uses them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from activepref.errors import ConfigError
from activepref.presets import DEFAULT_PRESET, PRESET_NAMES, apply_preset

BUILTIN_POOL = "builtin"

# `activepref simulate` on the 80-prompt built-in pool: the paper's b = 64 would give one
# iteration, and lr 5e-5 with zeta 1 barely moves 2-layer heads in a handful of
# iterations on 384-d features, so the demo uses smaller batches and a faster learner.
SIMULATE_BUILTIN_PRESET: dict[str, object] = {
    "batch_size": 8,
    "eval_fraction": 0.2,
    "enn.lr": 1e-3,
    "enn.zeta_decay": 0.9,
}
# `activepref simulate` on its default pool (1,024 prompts of seed 001's regime, or any pool
# file): the paper's b = 64 and learner, with a lighter ensemble (10 heads, 50 steps per
# iteration instead of 20 and 100) so that three methods x three seeds take about a minute.
SIMULATE_DEMO_PRESET: dict[str, object] = {
    "batch_size": 64,
    "eval_fraction": 0.2,
    "enn.heads": 10,
    "enn.steps": 50,
}


class _Strict(BaseModel):
    """Every config section: unknown fields are refused, and so are NaN and infinite numbers
    (``.inf`` would pass a ``ge=0`` bound and train or budget nonsense)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ENNConfig(_Strict):
    """Ensemble reward model and its training (001 App. B, Tables 14-16). These defaults are the
    ENN's everywhere (``activepref.model.enn`` reads them from here)."""

    # 001 Table 14 (architecture): 20 heads, 2 hidden layers of 128.
    heads: int = Field(20, ge=2, description="number of MLP heads K")
    hidden: int = Field(128, ge=1, description="hidden width of each head")
    layers: int = Field(2, ge=1, description="hidden layers per head")
    # 001 Table 15 (training): Adam lr 5e-5, 100 steps of 64 pairs per iteration, gamma 0.01,
    # zeta 1 decaying by 0.99 per iteration, |D_train| = b * rho with rho = 1000.
    lr: float = Field(5e-5, gt=0, description="Adam learning rate")
    steps: int = Field(100, ge=0, description="optimisation steps per iteration")
    batch_size: int = Field(64, ge=1, description="pairs per optimisation step")
    gamma: float = Field(0.01, ge=0, description="reward-centering coefficient")
    zeta: float = Field(1.0, ge=0, description="initial anchor regularisation")
    zeta_decay: float = Field(0.99, gt=0, le=1, description="zeta multiplier per iteration")
    rho: int = Field(1000, ge=1, description="|D_train| = min(|B|, batch_size * rho)")
    device: str = Field("cpu", description="torch device of the heads (e.g. cuda); feature rows move there as they are used")
    standardize: bool = Field(
        True, description="z-score each feature dimension over the pool (label-free) before the heads"
    )


class ModelConfig(_Strict):
    """One model behind a backend (generation pool member, judge or policy).

    The API key is never part of the config: ``api_key_env`` names the environment
    variable that holds it (default OPENAI_API_KEY for the openai backend).
    """

    name: str = Field("", description="label used in outputs (defaults to `model`)")
    backend: str = Field(..., description="which backend serves it (see `activepref plugins`: openai, transformers, vllm, ...)")
    model: str = Field(..., description="model id on the server, hub id or local path")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    gguf_file: str | None = Field(None, description="GGUF file inside `model` (transformers backend)")
    dtype: str = Field("float32", description="torch dtype of a local model")
    device: str = Field("cpu", description="torch device of a local model")
    batch_size: int = Field(8, ge=1, description="prompts per forward/generate call (local backends)")
    max_concurrency: int = Field(8, ge=1, description="requests in flight (openai backend)")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout in seconds")
    max_retries: int = Field(4, ge=0, description="retries on 429/5xx/timeouts/malformed answers")
    temperature: float | None = Field(None, ge=0, description="overrides generation.temperature for this model")
    top_p: float | None = Field(None, gt=0, le=1, description="overrides generation.top_p for this model")
    max_tokens: int | None = Field(None, ge=1, description="overrides generation.max_tokens for this model")
    cache_id: str | None = Field(
        None, description="the model's name in the request cache (default: the backend's endpoint, which for openai includes "
        "the base URL); set it to keep cached answers when the server moves to another host or port",
    )

    def label(self) -> str:
        return self.name or self.model

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from activepref.backends import BACKENDS

        return BACKENDS.check_name(v)


class GenerationConfig(_Strict):
    """Live candidate generation: every prompt gets ``samples_per_model`` responses from each
    model, each under a random principle and system prompt (001 §4.1; 001 Table 13 uses
    temperature 1, top-p 1)."""

    models: list[ModelConfig] = Field(..., min_length=1, description="the model pool")
    samples_per_model: int = Field(1, ge=1, description="responses per (prompt, model)")
    max_tokens: int = Field(256, ge=1, description="maximum response tokens")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    principles: list[str] = Field(
        default_factory=lambda: ["helpfulness", "truthfulness", "honesty", "instruction_following"],
        description="principles drawn per response",
    )

    @field_validator("principles")
    @classmethod
    def _known_principles(cls, v: list[str]) -> list[str]:
        from activepref.live.generation import SYSTEM_PROMPTS

        unknown = [p for p in v if p not in SYSTEM_PROMPTS]
        if unknown or not v:
            raise ValueError(f"principles must be among {', '.join(SYSTEM_PROMPTS)} (got {unknown or v})")
        return v


class EmbeddingConfig(_Strict):
    """The frozen backbone that turns (prompt, response) into features."""

    backend: str = Field(..., description="embedder kind (transformers, sentence_transformers, or a plugin's)")
    model: str = Field(..., description="hub id or local path ('builtin-minilm' for the shipped MiniLM)")
    gguf_file: str | None = Field(None, description="GGUF file inside `model`")
    sequence_classification: bool = Field(False, description="backbone is a reward model's base (AutoModelForSequenceClassification)")
    batch_size: int = Field(8, ge=1, description="conversations per forward pass")
    max_length: int = Field(1024, ge=8, description="tokens kept (the end of the conversation is kept)")
    dtype: str = Field("float32", description="torch dtype")
    device: str = Field("cpu", description="torch device")
    # the openai kind (an OpenAI-compatible /v1/embeddings server); batch_size is then texts per request
    base_url: str | None = Field(None, description="openai kind: server URL (default $OPENAI_BASE_URL, else OpenAI's)")
    api_key_env: str | None = Field(None, description="openai kind: environment variable holding the API key (default OPENAI_API_KEY)")
    max_concurrency: int = Field(4, ge=1, description="openai kind: requests in flight at once")
    timeout_s: float = Field(60.0, gt=0, description="openai kind: seconds per attempt")
    max_retries: int = Field(4, ge=0, description="openai kind: retries of a failed request (429, 5xx, timeouts, malformed answers)")
    dimensions: int | None = Field(None, ge=1, description="openai kind: the API's `dimensions` (shortened text-embedding-3 vectors)")
    max_chars: int | None = Field(None, ge=1, description="openai kind: send only the last N characters of each text (a model with a short context)")
    cache_id: str | None = Field(None, description="openai kind: the name its vectors are cached under instead of base URL and model (they stay valid when the server moves)")

    @field_validator("backend")
    @classmethod
    def _known_embedder(cls, v: str) -> str:
        from activepref.live.embedders import EMBEDDERS

        return EMBEDDERS.check_name(v)


# The flat judge fields of earlier releases (judge: {kind, backend, model, base_url, ...}),
# now the nested judge.model; accepted with a FutureWarning for one release.
FLAT_JUDGE_MODEL_FIELDS = (
    "backend", "base_url", "api_key_env", "gguf_file", "dtype", "device", "batch_size", "max_concurrency", "timeout_s",
)
FLAT_JUDGE_MAX_CONCURRENCY = 16  # the flat form's default, kept so old configs behave as before


class JudgeBatchConfig(_Strict):
    """How ``mode: batch`` and ``mode: file`` judge (see ``activepref.backends.openai_batch``)."""

    completion_window: str = Field("24h", description="the batch's completion window, as the provider takes it (OpenAI: 24h)")
    poll_interval_s: float = Field(30.0, gt=0, description="seconds between two status checks of a pending batch")
    max_retries: int = Field(2, ge=0, description="new, smaller jobs for failed or expired lines before they count as failures")
    directory: str | None = Field(None, description="mode file: where request files are written (default RUN/judge-files)")


class JudgeConfig(_Strict):
    """Who annotates: ``kind`` names a registered judge (``activepref plugins``). ``replay``
    reveals the pool's stored scores, counting each reveal; ``likert`` asks a model (any
    backend) for 1-5 digits per aspect and takes the expected score; ``reward_model`` scores
    with a local sequence-classification reward model (backend transformers). A model judge's
    model is ``model:``, a model config like a generator's (backend, model, base_url, device,
    dtype, ...)."""

    kind: str = Field("replay", description="judge kind (replay, likert, reward_model, or a plugin's)")
    max_retries: int = Field(2, ge=0, description="retries before a call is recorded as a failure")
    audit_log: str | None = Field(None, description="append one JSON line per judge call to this file (audit of paid calls)")
    model: ModelConfig | None = Field(None, description="the judge's model (model judges)")
    both_orders: bool = Field(
        False, description="judges that compare pairs (pairwise): ask each pair in both orders, average, and report position consistency"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="the judge kind's own settings (e.g. verifier: {noise_sd: 0.3})")
    mode: Literal["online", "batch", "file"] = Field(
        "online", description="online: one call per request; batch: each iteration's calls as one batch job (Files + Batch API, "
        "at the batch price); file: write them as a batch-format JSONL for an offline run (`activepref judge-file`)"
    )
    batch: JudgeBatchConfig = Field(default_factory=JudgeBatchConfig, description="settings of mode batch and mode file")

    @model_validator(mode="before")
    @classmethod
    def _flat_model_fields(cls, data: Any) -> Any:
        """judge: {backend: openai, model: gpt-4o, ...} -> judge: {model: {backend: ..., model: ...}}."""
        if not isinstance(data, dict):
            return data
        flat = [k for k in FLAT_JUDGE_MODEL_FIELDS if k in data]
        if not flat and not isinstance(data.get("model"), str):
            return data
        if flat and isinstance(data.get("model"), dict):
            raise ValueError(f"give the judge's model nested under judge.model, not also as flat fields ({', '.join(flat)})")
        data = dict(data)
        model: dict[str, Any] = {"name": "judge", "max_retries": data.get("max_retries", 2)}
        model["max_concurrency"] = FLAT_JUDGE_MAX_CONCURRENCY
        for key in flat:
            model[key] = data.pop(key)
        if "model" in data:
            model["model"] = data.pop("model")
        data["model"] = model
        warnings.warn(
            f"judge: the flat fields {', '.join(flat + ['model'])} are deprecated and will be refused in the next "
            "release; nest them under judge.model (judge: {kind: likert, model: {backend: openai, model: ..., base_url: ...}})",
            FutureWarning,
            stacklevel=2,
        )
        return data

    @field_validator("kind")
    @classmethod
    def _known_judge(cls, v: str) -> str:
        from activepref.judges import JUDGES

        return JUDGES.check_name(v)

    @model_validator(mode="after")
    def _model_fits_kind(self) -> JudgeConfig:
        from activepref.judges import JUDGES

        entry = JUDGES.get(self.kind)
        if entry.needs_model and self.model is None:
            raise ValueError(f"judge kind {self.kind!r} needs `model` (judge.model: {{backend: ..., model: ...}})")
        entry.options(self.options)
        if self.both_orders and not entry.compares:
            raise ValueError(f"both_orders applies to judges that compare pairs (e.g. pairwise); {self.kind!r} scores responses")
        if self.mode != "online" and (self.model is None or self.model.backend != "openai"):
            raise ValueError(
                f"mode {self.mode} sends chat-completions requests in the OpenAI batch format: it needs a judge model with "
                f"backend openai (judge kind {self.kind!r} has {'no model' if self.model is None else 'backend ' + repr(self.model.backend)})"
            )
        if self.model is not None and entry.backends is not None and self.model.backend not in entry.backends:
            raise ValueError(
                f"judge kind {self.kind!r} runs on backend {' or '.join(sorted(entry.backends))}, "
                f"not {self.model.backend!r} (set judge.model.backend)"
            )
        return self

    def require_model(self) -> ModelConfig:
        """The judge's model config (ConfigError if the kind has none)."""
        if self.model is None:
            raise ConfigError(f"judge kind {self.kind!r} has no `model`")
        return self.model


class PriceConfig(_Strict):
    """What one model's calls cost (USD). Tokens are those the server reports (usage)."""

    input_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt tokens")
    output_per_mtok: float = Field(0.0, ge=0, description="USD per million completion tokens")
    per_call: float = Field(0.0, ge=0, description="USD per call on top of tokens (e.g. a human annotator's rate per item)")
    batch_discount: float = Field(0.5, ge=0, le=1, description="share taken off in batch mode (OpenAI's Batch API: 0.5)")


class BudgetConfig(_Strict):
    """Limits of a run. An iteration starts only if what the run has spent plus what the
    iteration is projected to spend fits every limit (see ``activepref.core.budget``); the run
    then stops cleanly (exit 0, status "stopped: budget") and ``activepref resume`` with a
    larger limit continues where it stopped. Spending counts every call the dataset rests on,
    whether this process paid for it or the request cache had it."""

    max_usd: float | None = Field(None, gt=0, description="stop before the run's cost (at the price table) would pass this")
    max_judge_calls: int | None = Field(None, ge=1, description="stop before the judge's calls would pass this")
    max_generated_tokens: int | None = Field(None, ge=1, description="stop before the generated (completion) tokens would pass this")

    def active(self) -> bool:
        return any(v is not None for v in (self.max_usd, self.max_judge_calls, self.max_generated_tokens))


class EngineConfig(_Strict):
    """Where model calls and bench runs execute: ``kind`` names a registered engine
    (``activepref plugins``); ``local`` (this machine) is the default."""

    kind: str = Field("local", description="execution engine (local, or a plugin's)")
    options: dict[str, Any] = Field(default_factory=dict, description="the engine's own settings")

    @field_validator("kind")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        from activepref.engines import ENGINES

        return ENGINES.check_name(v)

    def with_kind(self, kind: str | None) -> EngineConfig:
        """This section with ``kind`` swapped in (``--engine``): unchanged, options included,
        when ``kind`` is None or already this kind; else that engine with no options."""
        return self if kind is None or kind == self.kind else EngineConfig(kind=kind)


class RunConfig(_Strict):
    pool: str | None = Field(None, description="candidate pool (.jsonl/.parquet) or 'builtin' (the default without `prompts`)")
    prompts: str | None = Field(None, description="prompts file (.jsonl: prompt_id, prompt or messages) for live generation")
    generation: GenerationConfig | None = Field(None, description="live generation (needs `prompts`)")
    embedding: EmbeddingConfig | None = Field(None, description="live embedding (needs `prompts`)")
    cache_path: str | None = Field(None, description="request cache file (default ~/.cache/activepref/requests.sqlite)")
    features: str | None = Field(None, description=".npy feature matrix whose rows follow the pool file")
    method: str = Field("dts", description="acquisition method (see `activepref methods`)")
    preset: str = Field(
        DEFAULT_PRESET,
        description="per-method beta, enn.zeta_decay, enn.rho of 001 Table 16 where unset: paper-dpo, paper-rm or none",
    )
    method_options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the method")
    batch_size: int = Field(64, ge=1, description="prompts per iteration b (001: 64)")
    iterations: int | None = Field(None, ge=1, description="stop after this many iterations (default: whole pool)")
    seed: int = Field(0, ge=0, description="seed of every random draw in the run")
    beta: float = Field(1.0, ge=0, description="bounds = mean +/- beta * std (001 Table 16: 1 or 2)")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share of prompts held out for accuracy, never annotated")
    eval_monitor_prompts: int | None = Field(
        128, ge=1,
        description="held-out prompts the ENN is scored on after every iteration (a seeded sample of them; null: all). "
        "Dataset quality (`evaluate`, the bench's rm_accuracy) always uses every held-out prompt",
    )
    design_budget: int | None = Field(None, ge=1, description="comparisons a batch design acquires per iteration (default: batch_size)")
    cross_prompt: bool = Field(False, description="batch designs may compare responses to different prompts (002 §3.4)")
    cross_prompt_max_pairs: int = Field(50_000, ge=1, description="cross-prompt candidate comparisons are subsampled to this many")
    keep_checkpoints: int = Field(2, ge=1, description="ENN checkpoints kept in the run directory")
    enn: ENNConfig = Field(default_factory=ENNConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig, description="execution engine (default: local)")
    prices: dict[str, PriceConfig] = Field(
        default_factory=dict, description="price table: model name (a generator's or the judge's name, else its model id) -> prices"
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="limits that stop the run cleanly (resume raises them)")

    @model_validator(mode="after")
    def _mode(self) -> RunConfig:
        if self.prompts is not None:
            if self.pool is not None:
                raise ValueError("give either `pool` (pre-generated candidates) or `prompts` (live generation), not both")
            if self.generation is None or self.embedding is None:
                raise ValueError("`prompts` needs `generation` (models) and `embedding` (backbone) sections")
            from activepref.judges import JUDGES

            if JUDGES.get(self.judge.kind).pool_scores:
                raise ValueError(
                    f"live generation needs a judge of new responses (e.g. judge.kind: likert); "
                    f"{self.judge.kind} only reads a pool's stored scores"
                )
        elif self.pool is None:
            self.pool = BUILTIN_POOL
        from activepref.acquisition import get_method
        from activepref.judges import JUDGES

        if JUDGES.get(self.judge.kind).compares and get_method(self.method).needs_scores:
            raise ValueError(
                f"method {self.method!r} picks its pair from the scores of more than two candidates, and judge kind "
                f"{self.judge.kind!r} compares pairs; use a judge that scores responses (e.g. likert) or another method"
            )
        return self

    @property
    def live(self) -> bool:
        return self.prompts is not None

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESET_NAMES:
            raise ValueError(f"unknown preset {v!r}; choose one of: {', '.join(PRESET_NAMES)}")
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from activepref.acquisition import REGISTRY

        return REGISTRY.check_name(v)


def _check_method_options(config: RunConfig) -> None:
    """Validate the method's options against its typed options model (names, types, bounds
    and the rules across options), so that a bad option fails before a run directory exists."""
    from activepref.acquisition import make_selector

    make_selector(config.method, config.method_options)


def _format_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        value = err.get("input")
        shown = f" (got {value!r:.60})" if err["type"] != "extra_forbidden" and not isinstance(value, dict) else ""
        parts.append(f"{loc}: {msg}{shown}")
    return f"{source}: " + "; ".join(parts)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML
    keeps the last one silently, so ``enn: {lr: ...}`` followed later by ``enn: {steps: ...}``
    would drop the learning rate without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> Any:
    """The YAML document of a config file, with duplicate keys refused. Errors (ConfigError)
    name the file, and for bad YAML the line and column."""
    if not path.exists():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = "; ".join(p for p in (exc.problem, exc.context) if p)
        raise ConfigError(f"{path}: invalid YAML at {where}{what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None


def read_yaml_config(path: Path, path_keys: tuple[str, ...] = (), keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """The top-level mapping of a YAML config file (empty file = {}); the string values of
    ``path_keys`` that are relative paths (and not in ``keep``) become relative to the file's
    folder. Errors name the file."""
    loaded = load_yaml(path)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    for key in path_keys:
        value = loaded.get(key)
        if isinstance(value, str) and value not in keep and not Path(value).is_absolute():
            loaded[key] = str(path.parent / value)
    return loaded


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read an optional YAML file, apply dotted-key overrides (flags), validate.

    Errors name the file and the field, e.g. ``my.yaml: enn.lr: Input should be greater than 0``.
    """
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        path = Path(path)
        source = str(path)
        data = read_yaml_config(path, ("pool", "features", "prompts"), keep=(BUILTIN_POOL,))
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, key, value)
    data = apply_preset(data, RunConfig.model_fields["method"].default)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        given = any(v is not None for v in (overrides or {}).values())
        raise ConfigError(_format_error(exc, f"{source} (+ flags)" if given and path is not None else source)) from None
    _check_method_options(config)
    return config


def config_from_json(text: str) -> RunConfig:
    return RunConfig.model_validate_json(text)
