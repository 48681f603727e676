"""What ``activepref check`` verifies before a run starts, without loading a model or calling a
server: the config's fields and names (``load_config`` checks those against the registries),
then every file the run will read, read and validated as the run would read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from activepref.config import BUILTIN_POOL, RunConfig
from activepref.errors import ConfigError


@dataclass(frozen=True)
class Preflight:
    """What the run would start from: one line per part, for the user to read."""

    lines: list[str]


def _must_exist(field: str, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(f"{field}: file {value} does not exist")
    return path


def check_config(config: RunConfig) -> Preflight:
    """Read and validate every input of ``config`` (pool or prompts, features); raise
    ConfigError / PoolFormatError naming the field or the file, line and field."""
    from activepref.core.generators import check_generators_exist, fixed_generators
    from activepref.pools.reader import read_prompts
    from activepref.pools.sources import load_pool

    lines = [f"method {config.method} (preset {config.preset}), batch {config.batch_size}, seed {config.seed}"]
    if config.live:
        path = _must_exist("prompts", config.prompts)
        prompts = read_prompts(path)  # type: ignore[arg-type]
        lines.append(f"prompts {path}: {len(prompts)} prompts")
        assert config.generation is not None and config.embedding is not None
        models = ", ".join(f"{m.label()} ({m.backend})" for m in config.generation.models)
        lines.append(f"generation: {models}; {config.generation.samples_per_model} sample(s) per model")
        lines.append(f"embedding: {config.embedding.backend} {config.embedding.model}")
        check_generators_exist(config, [m.label() for m in config.generation.models])
    else:
        pool_name = config.pool or BUILTIN_POOL
        if pool_name != BUILTIN_POOL:
            _must_exist("pool", pool_name)
        _must_exist("features", config.features)
        pool = load_pool(pool_name, config.features)
        lines.append(
            f"pool {pool_name}: {len(pool.prompts)} prompts, {len(pool.responses)} candidates, d {pool.features.shape[1]}"
            + ("" if pool.oracle is None else ", with an oracle")
        )
        if fixed_generators(config) is not None:  # (a pool of millions of rows: only when a method names models)
            check_generators_exist(config, list(dict.fromkeys(r.model for r in pool.responses)))
    judge = config.judge
    model = "" if judge.model is None else f" with {judge.model.model} ({judge.model.backend})"
    lines.append(f"judge: {judge.kind}{model}")
    if judge.audit_log is not None and not Path(judge.audit_log).expanduser().parent.exists():
        raise ConfigError(f"judge.audit_log: folder {Path(judge.audit_log).parent} does not exist")
    return Preflight(lines)
