"""End to end through the command line (`activepref.cli:app`, and once the installed script).

Most tests go through typer's CliRunner in-process; the ENN is made tiny by a YAML config
so that a two-iteration run takes well under a second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from activepref.cli import app
from activepref.core.runs import split_prompts
from activepref.core.store import RunStore
from activepref.pools.reader import read_pool
from activepref.pools.sources import SYNTHETIC_MODELS

METHODS = ("random", "maxmin", "ultrafeedback", "delta_pair", "infomax", "dts", "maxminlcb", "drts", "deltaucb")
TINY = "enn:\n  heads: 4\n  hidden: 8\n  steps: 5\n"
RUN_FLAGS = ["--method", "dts", "--batch-size", "8", "--iterations", "2", "--seed", "0"]

runner = CliRunner()


from cli_fixtures import one_torch_thread, wide_consoles  # noqa: E402,F401  (autouse fixtures)


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, result.output
    assert result.exception is None


def assert_clean_failure(result, code: int = 2) -> str:
    """Non-zero exit, an 'error:' line, no traceback; returns the output on one line."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "error:" in result.output
    return " ".join(result.output.split())


def status_json(run_dir: Path) -> dict:
    result = invoke("status", run_dir, "--json")
    assert_ok(result)
    return json.loads(result.stdout)


def export_lines(run_dir: Path, dest: Path, *extra) -> list[dict]:
    assert_ok(invoke("export", run_dir, "--format", "jsonl", "-o", dest, *extra))
    return [json.loads(line) for line in dest.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with pool.parquet, pool.jsonl (same seed) and cfg.yaml."""
    d = tmp_path_factory.mktemp("cli")
    for name in ("pool.parquet", "pool.jsonl"):
        result = invoke("make-pool", "--prompts", 24, "--candidates", 5, "--min-candidates", 3, "--dim", 8, "-o", d / name)
        assert_ok(result)
    # the file says otherwise for batch size, iterations and seed: the flags must win
    (d / "cfg.yaml").write_text(TINY + "batch_size: 32\niterations: 5\nseed: 3\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def finished(work) -> Path:
    """A finished two-iteration dts run on the parquet pool."""
    out = work / "run-dts"
    result = invoke("run", "--pool", work / "pool.parquet", "--out", out, "-c", work / "cfg.yaml", *RUN_FLAGS)
    assert_ok(result)
    return out


# -- make-pool ------------------------------------------------------------------------------


def test_make_pool_writes_a_readable_pool(work):
    pool = read_pool(work / "pool.parquet")
    assert len(pool.prompts) == 24
    assert pool.dim == 8
    per_prompt = [int((pool.prompt_index == p).sum()) for p in range(24)]
    assert min(per_prompt) >= 3
    assert max(per_prompt) <= 5
    assert {r.model for r in pool.responses} <= set(SYNTHETIC_MODELS)
    assert pool.oracle is not None
    assert ((pool.scores >= 1.0) & (pool.scores <= 5.0)).all()


def test_make_pool_message_and_jsonl_variant(work, tmp_path):
    result = invoke("make-pool", "--prompts", 24, "--candidates", 5, "--min-candidates", 3, "--dim", 8, "-o", tmp_path / "p.jsonl")
    assert_ok(result)
    parquet = read_pool(work / "pool.parquet")
    jsonl = read_pool(tmp_path / "p.jsonl")
    assert f"wrote {len(parquet.responses)} candidates for 24 prompts to {tmp_path / 'p.jsonl'}" in result.stdout
    assert [r.id for r in jsonl.responses] == [r.id for r in parquet.responses]
    assert jsonl.scores.tolist() == parquet.scores.tolist()
    assert abs(jsonl.features - parquet.features).max() < 1e-5


# -- run / status / export ----------------------------------------------------------------------


def test_run_then_status_json(finished):
    st = status_json(finished)
    assert st["method"] == "dts"
    assert st["seed"] == 0  # flag, not the file's 3
    assert st["iterations_done"] == 2
    assert st["iterations_planned"] == 2  # flag, not the file's 5
    assert st["current"] is None
    assert st["pairs"] == 16  # 2 iterations x batch size 8 (flag, not the file's 32)
    assert st["annotations"] == 32  # dts judges two candidates per prompt
    assert st["failures"] == 0
    assert st["last_metrics"]["pairs"] == 16
    assert st["last_metrics"]["annotations"] == 32
    assert 0.0 <= st["last_metrics"]["heldout_accuracy"] <= 1.0


def test_stored_config_merges_file_and_flags(finished):
    ro = RunStore.open_readonly(finished)
    try:
        cfg = json.loads(ro.meta("config"))
    finally:
        ro.close()
    assert (cfg["enn"]["heads"], cfg["enn"]["hidden"], cfg["enn"]["steps"]) == (4, 8, 5)
    assert (cfg["batch_size"], cfg["iterations"], cfg["seed"], cfg["method"]) == (8, 2, 0, "dts")


def test_status_table(finished):
    result = invoke("status", finished)
    assert_ok(result)
    text = " ".join(result.stdout.split())
    assert "2 / 2 done" in text
    assert re.search(r"preference pairs │ 16 ", text)
    assert re.search(r"annotations \(responses judged\) │ 32 ", text)
    assert re.search(r"judge failures │ 0 ", text)


def test_run_prints_a_summary(work, tmp_path):
    result = invoke("run", "--pool", work / "pool.parquet", "--out", tmp_path / "r", "-c", work / "cfg.yaml",
                    "--method", "random", "--batch-size", "4", "--iterations", "1")
    assert_ok(result)
    text = " ".join(result.stdout.split())
    assert re.search(r"pairs │ 4 ", text)
    assert re.search(r"annotations │ 8 ", text)
    assert "heldout accuracy" in text


def test_export_jsonl_and_parquet(finished, tmp_path):
    result = invoke("export", finished, "--format", "jsonl", "-o", tmp_path / "x.jsonl")
    assert_ok(result)
    assert f"wrote 16 preference rows to {tmp_path / 'x.jsonl'}" in result.stdout
    rows = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 16
    assert {r["method"] for r in rows} == {"dts"}
    assert sorted({r["iteration"] for r in rows}) == [0, 1]

    result = invoke("export", finished, "--format", "parquet", "-o", tmp_path / "sub" / "x.parquet")
    assert_ok(result)
    table = pq.read_table(tmp_path / "sub" / "x.parquet")
    assert table.num_rows == 16
    assert table.to_pylist() == rows


def test_export_default_format_is_parquet(finished, tmp_path):
    assert_ok(invoke("export", finished, "-o", tmp_path / "x.parquet"))
    assert pq.read_table(tmp_path / "x.parquet").num_rows == 16


def test_export_bad_format(finished, tmp_path):
    text = assert_clean_failure(invoke("export", finished, "--format", "csv", "-o", tmp_path / "x.csv"))
    assert "--format must be parquet or jsonl, not 'csv'" in text
    assert not (tmp_path / "x.csv").exists()


def test_status_and_export_of_a_directory_without_a_run(tmp_path):
    text = assert_clean_failure(invoke("status", tmp_path))
    assert f"{tmp_path} is not an activepref run directory" in text
    text = assert_clean_failure(invoke("export", tmp_path, "-o", tmp_path / "x.parquet"))
    assert f"{tmp_path} is not an activepref run directory" in text


def test_methods_lists_all_nine(tmp_path):
    result = invoke("methods")
    assert_ok(result)
    names = [m.group(1) for m in re.finditer(r"^│ (\w+) +│", result.stdout, flags=re.MULTILINE)]
    assert set(METHODS) <= set(names)  # the nine per-prompt methods, then the batch designs
    assert "sample_size=4" in result.stdout  # ultrafeedback's option and its default
    assert "strong (required), weak (required)" in result.stdout


def test_methods_shows_descriptions_verbatim():
    result = invoke("methods")
    assert_ok(result)
    assert "two independent draws in [lower, upper], distinct argmaxes" in result.stdout


# -- failures are one clean line -------------------------------------------------------------------


def test_run_twice_on_the_same_out_fails_cleanly(work, finished, tmp_path):
    before = export_lines(finished, tmp_path / "before.jsonl")
    result = invoke("run", "--pool", work / "pool.parquet", "--out", finished, "-c", work / "cfg.yaml", *RUN_FLAGS)
    text = assert_clean_failure(result)
    assert f"{finished} already holds a run; use `activepref resume {finished}` or choose another --out" in text
    assert status_json(finished)["iterations_done"] == 2
    assert export_lines(finished, tmp_path / "after.jsonl") == before


def test_resume_of_a_finished_run_changes_nothing(finished, tmp_path):
    before = export_lines(finished, tmp_path / "before.jsonl")
    status_before = status_json(finished)
    result = invoke("resume", finished)
    assert_ok(result)
    assert status_json(finished) == status_before
    assert export_lines(finished, tmp_path / "after.jsonl") == before


def test_resume_of_a_finished_run_says_nothing_to_do(finished):
    result = invoke("resume", finished)
    assert_ok(result)
    assert "nothing to do" in result.stdout


def test_resume_while_the_run_is_locked(finished):
    store = RunStore.open(finished)
    try:
        text = assert_clean_failure(invoke("resume", finished))
        assert f"{finished} is in use by another activepref process" in text
        # reading does not need the lock
        assert status_json(finished)["iterations_done"] == 2
    finally:
        store.close()


def test_bad_config_field(work, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("enn:\n  heads: 4\n  hiddn: 8\n", encoding="utf-8")
    text = assert_clean_failure(invoke("run", "--pool", work / "pool.parquet", "--out", tmp_path / "r", "-c", cfg))
    assert str(cfg) in text
    assert "enn.hiddn: unknown field" in text
    assert not (tmp_path / "r").exists()


def test_bad_flag_value(work, tmp_path):
    text = assert_clean_failure(invoke("run", "--pool", work / "pool.parquet", "--out", tmp_path / "r", "--batch-size", "0"))
    assert "batch_size: Input should be greater than or equal to 1" in text
    text = assert_clean_failure(invoke("run", "--pool", work / "pool.parquet", "--out", tmp_path / "r", "--method", "best"))
    assert "method: unknown method 'best'" in text
    assert not (tmp_path / "r").exists()


def test_missing_config_file(work, tmp_path):
    text = assert_clean_failure(invoke("run", "--out", tmp_path / "r", "-c", tmp_path / "nope.yaml"))
    assert f"{tmp_path / 'nope.yaml'}: config file does not exist" in text


def _corrupt(work: Path, dest: Path, how: str) -> Path:
    lines = (work / "pool.jsonl").read_text(encoding="utf-8").splitlines()
    if how == "json":
        lines[2] = lines[2][:-7]  # cut off the end of the object
    else:
        row = json.loads(lines[2])
        if how == "response":
            del row["response"]
        else:
            row["features"] = row["features"][:5]
        lines[2] = json.dumps(row)
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("json", ", line 3: invalid JSON"),
        ("response", ", line 3, field 'response': Field required"),
        ("features", ", line 3, field 'features': length 5, expected 8 as on the first row"),
    ],
)
def test_malformed_pool(work, tmp_path, how, expected):
    pool = _corrupt(work, tmp_path / "bad.jsonl", how)
    text = assert_clean_failure(invoke("run", "--pool", pool, "--out", tmp_path / "r", "-c", work / "cfg.yaml"))
    assert f"{pool}{expected}" in text
    assert not (tmp_path / "r").exists()


def test_missing_pool_file(work, tmp_path):
    text = assert_clean_failure(invoke("run", "--pool", tmp_path / "none.jsonl", "--out", tmp_path / "r", "-c", work / "cfg.yaml"))
    assert f"{tmp_path / 'none.jsonl'}, file: does not exist" in text


def test_bad_method_option_is_reported(work, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY + "method: delta_pair\nmethod_options: {strong: strong-a, wek: weak-b}\n", encoding="utf-8")
    text = assert_clean_failure(invoke("run", "--pool", work / "pool.parquet", "--out", tmp_path / "r", "-c", cfg))
    assert "method_options: wek not an option of 'delta_pair' (valid: strong, weak)" in text


def test_bad_method_option_leaves_no_run_behind(work, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY + "method: delta_pair\nmethod_options: {strong: strong-a, wek: weak-b}\n", encoding="utf-8")
    assert_clean_failure(invoke("run", "--pool", work / "pool.parquet", "--out", tmp_path / "r", "-c", cfg))
    assert not (tmp_path / "r" / "run.sqlite").exists()


# -- determinism, other pools and methods -----------------------------------------------------------


def test_same_config_and_seed_give_identical_exports(work, finished, tmp_path):
    out = tmp_path / "again"
    assert_ok(invoke("run", "--pool", work / "pool.parquet", "--out", out, "-c", work / "cfg.yaml", *RUN_FLAGS))
    for fmt in ("jsonl", "parquet"):
        assert_ok(invoke("export", finished, "--format", fmt, "-o", tmp_path / f"a.{fmt}"))
        assert_ok(invoke("export", out, "--format", fmt, "-o", tmp_path / f"b.{fmt}"))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))
    a, b = status_json(finished), status_json(out)
    assert a["last_metrics"] == b["last_metrics"]


def test_jsonl_and_parquet_pools_give_the_same_dataset(work, tmp_path):
    """random never looks at the features, so the 1e-6 rounding of the JSONL pool cannot matter."""
    flags = ["-c", work / "cfg.yaml", "--method", "random", "--batch-size", "6", "--iterations", "1", "--seed", "4"]
    assert_ok(invoke("run", "--pool", work / "pool.jsonl", "--out", tmp_path / "j", *flags))
    assert_ok(invoke("run", "--pool", work / "pool.parquet", "--out", tmp_path / "p", *flags))
    j = export_lines(tmp_path / "j", tmp_path / "j.jsonl")
    p = export_lines(tmp_path / "p", tmp_path / "p.jsonl")
    assert len(j) == 6
    assert j == p


def test_delta_pair_uses_no_annotations(work, tmp_path):
    cfg = tmp_path / "delta.yaml"
    cfg.write_text(TINY + "method: delta_pair\nmethod_options: {strong: strong-a, weak: weak-b}\n", encoding="utf-8")
    out = tmp_path / "delta"
    assert_ok(invoke("run", "--pool", work / "pool.parquet", "--out", out, "-c", cfg,
                     "--batch-size", "8", "--iterations", "2", "--seed", "0"))
    # expected pairs: prompts of the first two batches that have both a strong-a and a weak-b candidate
    pool = read_pool(work / "pool.parquet")
    _, order = split_prompts(24, 0.1, 0)
    batch_prompts = [int(p) for p in order[:16]]
    models = {p: {r.model for r, i in zip(pool.responses, pool.prompt_index) if i == p} for p in batch_prompts}
    expected = sorted(pool.prompts[p].id for p in batch_prompts if {"strong-a", "weak-b"} <= models[p])

    st = status_json(out)
    assert st["method"] == "delta_pair"
    assert st["annotations"] == 0
    assert st["pairs"] == len(expected)
    rows = export_lines(out, tmp_path / "d.jsonl")
    assert sorted(r["prompt_id"] for r in rows) == expected
    for r in rows:
        assert (r["model_chosen"], r["model_rejected"]) == ("strong-a", "weak-b")
        assert r["score_chosen"] is None
        assert r["score_rejected"] is None
        assert r["chosen"][0]["content"].endswith("by strong-a.")
        assert r["rejected"][0]["content"].endswith("by weak-b.")


def test_simulate_random_on_the_builtin_pool(tmp_path):
    result = invoke("simulate", "--pool", "builtin", "--method", "random", "--seeds", "1", "--iterations", "1", "--out", tmp_path)
    assert_ok(result)
    out = result.stdout
    assert "simulation on the built-in pool" in out
    assert "held-out" in out
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("│ random"))
    cells = [c.strip() for c in lines[at].strip("│").split("│")]
    under = [c.strip() for c in lines[at + 1].strip("│").split("│")]
    assert cells[0] == "random"
    assert under[0] == "8 pairs"  # the preset's batch of 8 prompts, one pair each
    assert cells[1] == "16"  # random judges two candidates per prompt
    assert 0.0 <= float(cells[2]) <= 1.0
    assert "minus Random" not in out  # nothing to compare with
    assert f"run directories: {tmp_path}" in out
    assert status_json(tmp_path / "random-seed0")["iterations_done"] == 1


def _simulate_cells(out: str, title: str) -> dict[str, list[list[str]]]:
    """Rows of the table under ``title``: method -> its lines' cells (a row spans two lines)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    rows: dict[str, list[list[str]]] = {}
    current = None
    for line in lines[start:]:
        if line.startswith("└"):
            break
        if line.startswith(("├", "┡")):  # a row ends (rows are separated by rules)
            current = None
            continue
        if not line.startswith("│") or "method" in line:
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if current is None:
            current = cells[0]
        rows.setdefault(current, []).append(cells)
    return rows


def test_simulate_default_pool_reports_seed_spread_and_paired_differences(tmp_path):
    result = invoke("simulate", "--method", "random,drts", "--seeds", "2", "--prompts", "160", "--iterations", "2",
                    "--no-plot", "--out", tmp_path)
    assert_ok(result)
    out = result.stdout
    assert "simulation on seed 001's regime (160 prompts x 30 models, d 64, judge noise 0.5)" in out
    pools = list(tmp_path.glob("auf-160x30-d64-noise0.5-seed0.parquet"))
    assert len(pools) == 1
    written = read_pool(pools[0])
    assert (len(written.prompts), len(written.responses), written.dim) == (160, 160 * 30, 64)

    finals = {}
    for method in ("random", "drts"):
        for s in (0, 1):
            st = status_json(tmp_path / f"{method}-seed{s}")
            assert st["iterations_done"] == 2
            finals[method, s] = st
    table = _simulate_cells(out, "simulation on")
    for method in ("random", "drts"):
        first, second = table[method]
        accs = [finals[method, s]["last_metrics"]["heldout_accuracy"] for s in (0, 1)]
        assert second[0] == f"{(finals[method, 0]['pairs'] + finals[method, 1]['pairs']) / 2:.0f} pairs"
        mean, sd = first[2].split(" ± ")
        assert float(mean) == pytest.approx(sum(accs) / 2, abs=6e-4)
        assert float(sd) == pytest.approx(abs(accs[0] - accs[1]) / 2, abs=6e-4)  # population sd of two values
        low, high = second[2].split(" to ")
        assert (float(low), float(high)) == pytest.approx((min(accs), max(accs)), abs=6e-4)
        assert first[1] == "256"  # 2 iterations x 64 prompts x 2 judge calls
        rm_mean = float(first[4].split(" ± ")[0])
        assert 0.0 <= rm_mean <= 1.0

    diff = _simulate_cells(out, "minus Random on the same seed")
    first, second = diff["drts"]
    deltas = [finals["drts", s]["last_metrics"]["heldout_accuracy"] - finals["random", s]["last_metrics"]["heldout_accuracy"] for s in (0, 1)]
    assert float(first[1].split(" ± ")[0]) == pytest.approx(sum(deltas) / 2, abs=6e-4)
    star = second[1].endswith("*")
    assert star == (min(deltas) > 0 or max(deltas) < 0)


def test_simulate_bad_demo_pool_parameters_fail_cleanly(tmp_path):
    msg = assert_clean_failure(invoke("simulate", "--method", "nosuch", "--seeds", "1", "--prompts", "8", "--out", tmp_path))
    assert "nosuch" in msg


# -- the installed console script ---------------------------------------------------------------


def _script() -> str:
    path = shutil.which("activepref", path=str(Path(sys.executable).parent)) or shutil.which("activepref")
    if path is None:
        pytest.skip("activepref console script not installed")
    return path


def test_console_script_help():
    proc = subprocess.run([_script(), "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "resume", "status", "export", "methods", "simulate", "make-pool"):
        assert re.search(rf"│ {command} ", proc.stdout), command
    assert "Traceback" not in proc.stderr


def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run([_script(), "export", str(tmp_path), "-o", str(tmp_path / "x.parquet")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "1000"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path} is not an activepref run directory (no run.sqlite)"
    assert proc.stdout == ""


def test_error_text_with_brackets_is_printed_as_is(tmp_path):
    """Issue 13: rich read `[local]` in "pip install 'activepref[local]'" as markup and dropped it."""
    odd = tmp_path / "run[local]"
    odd.mkdir()
    proc = subprocess.run([_script(), "status", str(odd)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "1000"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {odd} is not an activepref run directory (no run.sqlite)"


def test_a_run_writing_to_a_file_prints_a_line_per_stage_and_iteration(work, tmp_path):
    """Issue 13: with its output redirected, a long run printed nothing until it ended (rich
    draws bars only on a terminal). Not on a terminal, each stage and iteration is a line."""
    cfg = work / "tiny.yaml"
    cfg.write_text(TINY)
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        proc = subprocess.run([_script(), "run", "--out", str(tmp_path / "r"), "-c", str(cfg), *RUN_FLAGS],
                              stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, log.read_text()
    lines = log.read_text().splitlines()
    progress = [line for line in lines if line.startswith("dts [")]
    assert [line.split("] ", 1)[1] for line in progress if "done" not in line] == [
        "iteration 1: select", "iteration 1: annotate", "iteration 1: train",
        "iteration 2: select", "iteration 2: annotate", "iteration 2: train",
    ]
    done = [line for line in progress if "done" in line]
    assert len(done) == 2 and "iteration 1/2 done: pairs " in done[0] and "iteration 2/2 done: pairs " in done[1]


def test_the_command_line_silences_tqdm_before_a_model_library_imports_it():
    """Issue 13: transformers' GGUF conversion bar (tqdm) leaked into quickstart/apl output:
    tqdm reads TQDM_DISABLE when first imported, which happened before the CLI set it."""
    code = (
        "import sys, activepref.cli as cli\n"
        "def fake_app():\n"
        "    from tqdm.auto import tqdm\n"
        "    for _ in tqdm(range(3), desc='Converting and de-quantizing GGUF tensors...'): pass\n"
        "cli.app = fake_app\n"
        "cli.main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "GGUF" not in proc.stderr and proc.stdout == ""


COMMANDS = ("run", "resume", "status", "export", "evaluate", "methods", "plugins", "check", "simulate", "quickstart", "apl", "bench", "make-pool")


def test_help_paragraphs_wrap_once_at_the_terminal_width():
    """Issue 13: the docstrings' own line breaks were kept, so rich wrapped them again at 80
    columns and left half-empty lines mid-sentence. A paragraph's lines must be filled: only a
    paragraph's last line (before a blank line or a list) may be short."""
    for command in COMMANDS:
        result = runner.invoke(app, [command, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.output.splitlines()) <= 80
        body = result.output.split("Usage:", 1)[1].split("╭", 1)[0].splitlines()[1:]
        lines = [line.rstrip() for line in body]
        for here, after in zip(lines, lines[1:]):
            continues = after.strip() and not after.strip().startswith(("•", "-"))
            if here.strip() and continues and not here.strip().startswith("•"):
                assert len(here) >= 55, f"{command} --help wraps early: {here!r} / {after!r}"


def test_check_validates_a_config_and_reads_its_pool_without_a_model(work, tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(f"pool: {work / 'pool.parquet'}\nmethod: dts\n" + TINY)
    result = invoke("check", "-c", cfg)
    assert_ok(result)
    assert f"pool {work / 'pool.parquet'}: 24 prompts" in result.output and result.output.rstrip().endswith("ok")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pool: missing.parquet\n", "pool: file {dir}/missing.parquet does not exist"),
        ("features: nope.npy\n", "features: file {dir}/nope.npy does not exist"),
        ("judge: {kind: likert, model: {backend: ollama, model: m}}\n", "judge.model.backend: unknown backend 'ollama'"),
        ("method: dopt\nmethod_options: {method: magic}\n", "method_options.method: Input should be 'gradient' or 'greedy' (got 'magic') (method 'dopt')"),
        ("judge: {kind: replay, audit_log: /no/such/dir/audit.jsonl}\n", "judge.audit_log: folder /no/such/dir does not exist"),
    ],
)
def test_check_names_the_field_and_value_and_exits_2(tmp_path, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    result = invoke("check", "-c", cfg)
    assert result.exit_code == 2, result.output
    assert expected.format(dir=tmp_path) in " ".join(result.output.split())


def test_check_reads_the_pool_as_a_run_would_and_names_the_bad_line(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt_id": "p", "prompt": "x", "response_id": "r", "response": "y", "model": "m", "features": [1.0, "a"]}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pool: pool.jsonl\n")
    result = invoke("check", "-c", cfg)
    assert result.exit_code == 2
    assert f"{pool}, line 1, field 'features.1': Input should be a valid number" in " ".join(result.output.split())


def test_the_flat_judge_config_warns_in_one_line(tmp_path):
    cfg = tmp_path / "flat.yaml"
    cfg.write_text("judge: {kind: likert, backend: openai, model: j}\n")
    proc = subprocess.run([_script(), "check", "-c", str(cfg)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "1000"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "warning: judge: the flat fields backend, model are deprecated and will be refused in the next release; "
        "nest them under judge.model (judge: {kind: likert, model: {backend: openai, model: ..., base_url: ...}})"
    ]
    assert "judge: likert with j (openai)" in proc.stdout


def test_methods_verbose_lists_every_option_with_type_default_bounds_and_help():
    result = invoke("methods", "--verbose")
    assert_ok(result)
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines() if line.startswith("│")]
    by_key = {(r[0], r[1]): r for r in rows if len(r) == 6 and r[0]}
    assert by_key[("deltaquantile", "quantile")][2:5] == ["float", "0.05", ">= 0, <= 1"]
    assert by_key[("dopt", "method")][2:4] == ["'gradient' | 'greedy'", "'gradient'"]
    assert by_key[("delta_pair", "strong")][3] == "required"
    assert by_key[("balpm", "k")][5].startswith("neighbours of the kNN")
