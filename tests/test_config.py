"""The run configuration (activepref.config.load_config): paper defaults, strict validation
with errors naming the field, flags over file, paths relative to the config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from activepref.config import BUILTIN_POOL, RunConfig, config_from_json, load_config
from activepref.errors import ActivePrefError, ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path=None, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# -- defaults ----------------------------------------------------------------------------


def test_defaults_follow_the_paper():
    cfg = load_config()
    e = cfg.enn
    assert e.heads == 20
    assert e.hidden == 128
    assert e.layers == 2
    assert e.lr == 5e-5
    assert e.steps == 100
    assert e.batch_size == 64
    assert e.gamma == 0.01
    assert e.zeta == 1.0
    assert cfg.batch_size == 64
    assert cfg.beta == 1.0
    assert cfg.method == "dts"
    assert cfg.pool == BUILTIN_POOL == "builtin"
    assert cfg.seed == 0
    assert cfg.iterations is None
    assert cfg.method_options == {}
    assert cfg.judge.kind == "replay"


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path / "c.yaml", "")) == RunConfig()


def test_json_round_trip():
    cfg = load_config(None, {"method": "maxmin", "enn.heads": 4, "method_options": {}})
    assert config_from_json(cfg.model_dump_json()) == cfg


# -- file + overrides ---------------------------------------------------------------------


def test_file_values_are_read(tmp_path):
    path = write(tmp_path / "c.yaml", "method: random\nbatch_size: 16\nseed: 7\nenn:\n  heads: 4\n  hidden: 8\n  steps: 5\n")
    cfg = load_config(path)
    assert (cfg.method, cfg.batch_size, cfg.seed) == ("random", 16, 7)
    assert (cfg.enn.heads, cfg.enn.hidden, cfg.enn.steps) == (4, 8, 5)
    assert cfg.enn.layers == 2  # untouched fields keep their defaults


def test_overrides_beat_the_file(tmp_path):
    path = write(tmp_path / "c.yaml", "batch_size: 32\nseed: 3\nenn:\n  heads: 4\n  steps: 7\n")
    cfg = load_config(path, {"batch_size": 8, "enn.steps": 5, "beta": 2.0})
    assert cfg.batch_size == 8
    assert cfg.enn.steps == 5
    assert cfg.beta == 2.0
    assert cfg.seed == 3  # from the file
    assert cfg.enn.heads == 4  # a dotted override merges into the file's section


def test_none_overrides_do_not_clobber_the_file(tmp_path):
    path = write(tmp_path / "c.yaml", "batch_size: 32\nmethod: maxmin\n")
    cfg = load_config(path, {"batch_size": None, "method": None, "seed": None})
    assert (cfg.batch_size, cfg.method, cfg.seed) == (32, "maxmin", 0)


def test_overrides_without_a_file():
    cfg = load_config(None, {"enn.heads": 3, "judge.max_retries": 0, "method": "ultrafeedback", "method_options": {"sample_size": 3}})
    assert cfg.enn.heads == 3
    assert cfg.judge.max_retries == 0
    assert cfg.method_options == {"sample_size": 3}


# -- relative paths --------------------------------------------------------------------------


def test_relative_pool_and_features_resolve_against_the_config_folder(tmp_path):
    path = write(tmp_path / "configs" / "c.yaml", "pool: data/pool.jsonl\nfeatures: ../feats.npy\n")
    cfg = load_config(path)
    assert Path(cfg.pool) == tmp_path / "configs" / "data" / "pool.jsonl"
    assert Path(cfg.features) == tmp_path / "configs" / ".." / "feats.npy"


def test_absolute_pool_and_builtin_are_kept(tmp_path):
    absolute = tmp_path / "elsewhere" / "pool.parquet"
    path = write(tmp_path / "configs" / "c.yaml", f"pool: {absolute}\n")
    assert Path(load_config(path).pool) == absolute
    path = write(tmp_path / "configs" / "b.yaml", "pool: builtin\n")
    assert load_config(path).pool == "builtin"


def test_pool_flag_is_not_rewritten_against_the_config_folder(tmp_path):
    path = write(tmp_path / "configs" / "c.yaml", "pool: data/pool.jsonl\n")
    assert load_config(path, {"pool": "mine.parquet"}).pool == "mine.parquet"


# -- errors name the field --------------------------------------------------------------------


def test_unknown_top_level_field(tmp_path):
    path = write(tmp_path / "c.yaml", "bogus: 1\n")
    msg = config_error(path)
    assert msg.startswith(str(path))
    assert "bogus: unknown field" in msg


def test_unknown_nested_field(tmp_path):
    path = write(tmp_path / "c.yaml", "enn:\n  heads: 4\n  hiddn: 8\n")
    msg = config_error(path)
    assert str(path) in msg
    assert "enn.hiddn: unknown field" in msg


def test_unknown_judge_field():
    assert "judge.kindd: unknown field" in config_error(None, {"judge.kindd": "replay"})


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("enn:\n  heads: many\n", "enn.heads"),
        ("batch_size: [1, 2]\n", "batch_size"),
        ("batch_size: 1.5\n", "batch_size"),
        ("seed: abc\n", "seed"),
        ("beta: fast\n", "beta"),
        ("method_options: strong\n", "method_options"),
        ("enn:\n  standardize: maybe\n", "enn.standardize"),
        ("enn: 5\n", "enn"),
        ("judge:\n  kind: llm\n", "judge.kind"),
    ],
)
def test_wrong_types(tmp_path, yaml_text, field):
    msg = config_error(write(tmp_path / "c.yaml", yaml_text))
    assert f"{field}: " in msg


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"enn.lr": 0}, "enn.lr"),
        ({"enn.heads": 1}, "enn.heads"),
        ({"seed": -1}, "seed"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"iterations": 0}, "iterations"),
        ({"enn.zeta_decay": 1.5}, "enn.zeta_decay"),
    ],
)
def test_out_of_range_values(overrides, field):
    msg = config_error(None, overrides)
    assert msg.startswith("command line")
    assert f"{field}: " in msg


def test_bad_method_name_lists_the_choices(tmp_path):
    msg = config_error(write(tmp_path / "c.yaml", "method: dtss\n"))
    assert "method: " in msg
    assert "unknown method 'dtss'" in msg
    for name in ("random", "maxmin", "ultrafeedback", "delta_pair", "infomax", "dts", "maxminlcb", "drts", "deltaucb"):
        assert name in msg


def test_several_errors_are_all_reported(tmp_path):
    msg = config_error(write(tmp_path / "c.yaml", "bogus: 1\nenn:\n  lr: -1\n"))
    assert "bogus: unknown field" in msg
    assert "enn.lr: " in msg


def test_missing_config_file(tmp_path):
    msg = config_error(tmp_path / "nope.yaml")
    assert msg == f"{tmp_path / 'nope.yaml'}: config file does not exist"


def test_invalid_yaml(tmp_path):
    msg = config_error(write(tmp_path / "c.yaml", "enn: [unclosed\n"))
    assert msg.startswith(f"{tmp_path / 'c.yaml'}: invalid YAML")


def test_top_level_must_be_a_mapping(tmp_path):
    msg = config_error(write(tmp_path / "c.yaml", "- a\n- b\n"))
    assert msg == f"{tmp_path / 'c.yaml'}: expected a mapping of fields at the top level"


def test_config_error_is_an_activepref_error():
    assert issubclass(ConfigError, ActivePrefError)


def test_error_source_does_not_mention_flags_when_none_were_given(tmp_path):
    path = write(tmp_path / "c.yaml", "bogus: 1\n")
    msg = config_error(path, {"pool": None, "batch_size": None})
    assert msg == f"{path}: bogus: unknown field"


# -- judges, backends and embedders are checked against their registries (issue 13) --------


def test_the_flat_judge_form_still_loads_with_a_warning_and_equals_the_nested_one(tmp_path):
    flat = write(tmp_path / "flat.yaml", "judge: {kind: likert, backend: openai, base_url: 'http://h:1/v1', model: j, dtype: float16}\n")
    nested = write(
        tmp_path / "nested.yaml",
        "judge: {kind: likert, model: {name: judge, backend: openai, base_url: 'http://h:1/v1', model: j, dtype: float16,"
        " max_retries: 2, max_concurrency: 16}}\n",
    )
    with pytest.warns(FutureWarning, match="judge: the flat fields backend, base_url, dtype, model are deprecated"):
        old = load_config(flat)
    new = load_config(nested)
    assert old.judge == new.judge
    assert old.judge.model.backend == "openai" and old.judge.model.max_concurrency == 16  # the flat form's default


def test_a_judge_model_given_both_ways_is_refused(tmp_path):
    path = write(tmp_path / "c.yaml", "judge: {kind: likert, backend: openai, model: {backend: openai, model: j}}\n")
    assert "nested under judge.model, not also as flat fields (backend)" in config_error(path)


def test_unknown_names_are_checked_against_the_registries(tmp_path):
    msg = config_error(write(tmp_path / "j.yaml", "judge: {kind: oracle}\n"))
    assert "judge.kind: unknown judge 'oracle'; choose one of: likert, pairwise, replay, reward_model" in msg
    msg = config_error(write(tmp_path / "b.yaml", "judge: {kind: likert, model: {backend: ollama, model: m}}\n"))
    assert "judge.model.backend: unknown backend 'ollama'; choose one of: openai, transformers, vllm" in msg
    live = (
        "prompts: p.jsonl\ngeneration: {models: [{backend: openai, model: m}]}\n"
        "embedding: {backend: clip, model: m}\njudge: {kind: likert, model: {backend: openai, model: j}}\n"
    )
    msg = config_error(write(tmp_path / "e.yaml", live))
    assert "embedding.backend: unknown embedder 'clip'; choose one of: transformers, sentence_transformers" in msg


def test_a_model_judge_without_its_model_names_the_field(tmp_path):
    assert "judge kind 'likert' needs `model`" in config_error(write(tmp_path / "c.yaml", "judge: {kind: likert}\n"))


def test_loading_a_config_imports_neither_torch_nor_an_extra(tmp_path):
    """Issue 13: `activepref.config` imported torch (through the ENN's defaults)."""
    import subprocess
    import sys

    path = write(tmp_path / "c.yaml", "method: dopt\njudge: {kind: likert, model: {backend: transformers, model: m}}\n")
    code = (
        "import sys; from activepref.config import load_config; load_config(sys.argv[1]); "
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'openai', 'vllm') if m in sys.modules); "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- method options are typed by the method's signature (issue 13) --------------------------


@pytest.mark.parametrize(
    ("method", "options", "expected"),
    [
        ("deltaquantile", "{quantile: 1.5}", "method_options.quantile: Input should be less than or equal to 1 (got 1.5) (method 'deltaquantile')"),
        ("ultrafeedback", "{sample_size: many}", "method_options.sample_size: Input should be a valid integer"),
        ("balpm", "{estimator: knn}", "method_options.estimator: Input should be 'ksg' or 'kl' (got 'knn')"),
        ("batchbald", "{pool_size: 0}", "method_options.pool_size: Input should be greater than or equal to 1"),
    ],
)
def test_method_options_are_checked_by_their_types_and_bounds(tmp_path, method, options, expected):
    path = write(tmp_path / "c.yaml", f"method: {method}\nmethod_options: {options}\n")
    assert expected in config_error(path)


def test_typed_options_reach_the_method_as_declared(tmp_path):
    """YAML's 0.1 for a float option and null for an optional int pass through unchanged."""
    from activepref.acquisition import get_method, make_selector

    assert get_method("batchbald").options_model.model_validate({"pool_size": None}).pool_size is None
    bound = make_selector("deltaquantile", {"quantile": 0.1, "half_width": 0.02})
    assert bound.keywords == {"quantile": 0.1, "half_width": 0.02}
    cfg = load_config(write(tmp_path / "c.yaml", "method: dopt\nmethod_options: {method: greedy}\n"))
    assert cfg.method_options == {"method": "greedy"}


def test_engine_with_kind_keeps_the_options_of_the_same_engine_only() -> None:
    from activepref.config import EngineConfig

    ray = EngineConfig(kind="ray", options={"actors": {"replicas": 2}})
    assert ray.with_kind(None) is ray and ray.with_kind("ray") is ray
    assert ray.with_kind("local") == EngineConfig(kind="local")
    assert EngineConfig().with_kind("ray") == EngineConfig(kind="ray")


def test_batch_and_file_judging_need_an_openai_judge_model():
    ok = RunConfig.model_validate({"judge": {"kind": "likert", "mode": "batch", "batch": {"poll_interval_s": 5},
                                             "model": {"backend": "openai", "model": "gpt-x"}}})
    assert ok.judge.mode == "batch" and ok.judge.batch.poll_interval_s == 5 and ok.judge.batch.completion_window == "24h"
    for judge in ({"kind": "replay", "mode": "batch"},
                  {"kind": "likert", "mode": "file", "model": {"backend": "transformers", "model": "m"}}):
        with pytest.raises(ValueError, match="needs a judge model with backend openai"):
            RunConfig.model_validate({"judge": judge})
    with pytest.raises(ValueError, match="mode"):
        RunConfig.model_validate({"judge": {"kind": "likert", "mode": "offline", "model": {"backend": "openai", "model": "m"}}})
