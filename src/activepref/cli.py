"""The ``activepref`` command line. Thin: parse, call the library, print."""

from __future__ import annotations

import inspect
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from activepref.errors import ActivePrefError, ConfigError, RunStopped

app = typer.Typer(
    help=(
        "Build LLM preference datasets with active learning.\n\n"
        "Start with `activepref simulate` (offline, built-in pool), then `activepref run` on your own\n"
        "candidate pool, `activepref export` to write a TRL dataset. `activepref methods` lists the\n"
        "acquisition methods."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Docstrings are hard-wrapped for the source; markdown mode joins a paragraph's lines so
    # rich wraps them once, at the terminal's width.
    rich_markup_mode="markdown",
)
console = Console()
err_console = Console(stderr=True)


def _quiet_model_loading() -> None:
    """Our progress bars own the terminal; silence the model loaders' bars (GGUF conversion)."""
    import os
    import sys
    import warnings

    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader uses tqdm directly
    # Each library reads its variable when first imported (TRL's tokenisation maps, the hub's
    # downloads, transformers' loaders). Importing datasets and transformers here only to call
    # their switches cost every run ~1.4 s of start-up, so that is done only where one is loaded.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # transformers 5 renames (gradient -> activation checkpointing) that TRL still calls
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning)
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _fail(exc: Exception) -> None:
    # The message is plain text: "pip install 'activepref[local]'" must not be read as markup.
    err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _stopped(exc: RunStopped) -> None:
    """A clean stop before the run's end (budget, judge file): say why and exit 0."""
    err_console.print(Text.assemble((f"stopped: {exc.reason}", "bold yellow"), " - ", str(exc)), highlight=False, soft_wrap=True)
    raise typer.Exit(code=0)


class _Bars:
    """Progress fed by the loop's callbacks: rich bars on a terminal; one plain line per stage
    and per iteration otherwise (a log file or a pipe, where rich would print nothing until the
    end)."""

    def __init__(self, label: str, plain: bool | None = None) -> None:
        self.label = label
        self.plain = (not err_console.is_terminal) if plain is None else plain
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err_console, transient=False,
        )
        self.task = self.progress.add_task(escape(label), total=None, info="")
        self.started = time.monotonic()

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        err_console.print(f"{self.label} [{elapsed:6.0f} s] {text}", markup=False, highlight=False, soft_wrap=True)

    def update(self, info: str, completed: int | None = None, total: int | None = None) -> None:
        """One progress report: a bar update on a terminal, else a line (with k/total if known)."""
        if self.plain:
            count = f"{completed}/{total} " if completed is not None and total is not None else ""
            self._line(count + info)
            return
        fields: dict[str, Any] = {"info": escape(info)}
        if completed is not None:
            fields["completed"] = completed
        if total is not None:
            fields["total"] = total
        self.progress.update(self.task, **fields)

    def callbacks(self) -> Any:
        from activepref.core.loop import Progress as LoopProgress

        def on_iteration(it: int, total: int, metrics: dict[str, Any]) -> None:
            acc = metrics.get("heldout_accuracy")
            info = f"pairs {metrics.get('pairs', 0)}  annotations {metrics.get('annotations', 0)}"
            if acc is not None:
                info += f"  held-out acc {acc:.3f}"
            if self.plain:
                self._line(f"iteration {it + 1}/{total} done: {info}")
            else:
                self.progress.update(self.task, total=total, completed=it + 1, info=escape(info))

        def on_stage(it: int, stage: str) -> None:
            self.update(f"iteration {it + 1}: {stage}")  # 1-based, like the bar's count

        return LoopProgress(on_iteration=on_iteration, on_stage=on_stage)

    def __enter__(self) -> _Bars:
        from activepref.backends.transformers_local import watching_loads

        if not self.plain:
            self.progress.__enter__()
        self._loads = watching_loads(self.update)  # a first model load is silent for up to ~30 s otherwise
        self._loads.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loads.__exit__(None, None, None)
        if not self.plain:
            self.progress.__exit__(*exc)  # type: ignore[arg-type]


def _config(config: Path | None, **flags: Any):  # type: ignore[no-untyped-def]
    from activepref.config import load_config

    return load_config(config, {k.replace("__", "."): v for k, v in flags.items()})


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config; flags override its fields.")]
PoolOpt = Annotated[str | None, typer.Option(help="Candidate pool (.jsonl/.parquet) or 'builtin'.")]
FeaturesOpt = Annotated[str | None, typer.Option(help=".npy feature matrix, one row per pool row in file order.")]
MethodOpt = Annotated[str | None, typer.Option(help="Acquisition method; see `activepref methods`.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Prompts per iteration (paper: 64).")]
ItersOpt = Annotated[int | None, typer.Option(help="Stop after this many iterations (default: the whole pool).")]
SeedOpt = Annotated[int | None, typer.Option(help="Seed of every random draw; same config + seed = same dataset.")]
BetaOpt = Annotated[float | None, typer.Option(help="Bounds are mean +/- beta * std of the ensemble.")]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="Where model calls (and bench runs) execute: local (default) or ray (model replicas as Ray actors, "
        "bench runs as Ray tasks; joins $RAY_ADDRESS or starts a local cluster; pip install 'activepref[ray]'). "
        "Cluster options go in the config's engine: section.",
    ),
]


NoWaitOpt = Annotated[
    bool,
    typer.Option("--no-wait", help="Human judges: stop at 'awaiting labels' instead of waiting for people (resume goes on)."),
]


def _with_engine(cfg: Any, engine: str | None) -> Any:
    """The config with ``engine.kind`` set from --engine (see ``EngineConfig.with_kind``)."""
    return cfg.model_copy(update={"engine": cfg.engine.with_kind(engine)})


def _print_summary(history: list[dict[str, Any]], out: Path) -> None:
    if not history:
        console.print("the run has no iterations (is the pool smaller than one batch of training prompts?)")
        return
    last = history[-1]
    table = Table(title=f"run {out}", show_header=False)
    for key in ("pairs", "annotations", "heldout_accuracy", "mean_chosen_reward", "mean_rejected_reward", "pair_agreement"):
        if key in last:
            v = last[key]
            table.add_row(key.replace("_", " "), f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)


@app.command()
def run(
    out: Annotated[Path, typer.Option(help="New run directory (must not hold a run).")],
    config: ConfigOpt = None,
    pool: PoolOpt = None,
    features: FeaturesOpt = None,
    method: MethodOpt = None,
    batch_size: BatchOpt = None,
    iterations: ItersOpt = None,
    seed: SeedOpt = None,
    beta: BetaOpt = None,
    cross_prompt: Annotated[
        bool | None, typer.Option("--cross-prompt/--in-prompt", help="Batch designs: compare responses across prompts too.")
    ] = None,
    engine: EngineOpt = None,
    no_wait: NoWaitOpt = False,
) -> None:
    """Run the active loop on a candidate pool and store everything in OUT.

    Each iteration: predict rewards with the ensemble, select pairs, have the judge score
    only what was selected, retrain. Interrupt at any time and `activepref resume OUT`.
    With a human judge (judge: {kind: human} or {kind: routed}) people label the pairs in
    `activepref annotate OUT`; the run waits for them, or with --no-wait stops at
    'awaiting labels' until `activepref resume OUT`.
    """
    from activepref.core import runs

    try:
        cfg = _config(
            config, pool=pool, features=features, method=method, batch_size=batch_size,
            iterations=iterations, seed=seed, beta=beta, cross_prompt=cross_prompt,
        )
        cfg = _with_engine(cfg, engine)
        if cfg.live:
            _quiet_model_loading()
        with _Bars(f"{cfg.method}") as bars:
            history = runs.run(cfg, out, bars.callbacks(), wait_for_labels=not no_wait)
    except RunStopped as exc:
        _stopped(exc)
    except ActivePrefError as exc:
        _fail(exc)
    _print_summary(history, out)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="Run directory to continue.")],
    engine: EngineOpt = None,
    max_usd: Annotated[float | None, typer.Option("--max-usd", help="Raise (or set) the run's budget in USD.")] = None,
    max_judge_calls: Annotated[int | None, typer.Option("--max-judge-calls", help="Raise (or set) the judge-call budget.")] = None,
    max_generated_tokens: Annotated[
        int | None, typer.Option("--max-generated-tokens", help="Raise (or set) the generated-token budget.")
    ] = None,
    no_wait: NoWaitOpt = False,
) -> None:
    """Continue a run at its first unfinished step (after a crash, Ctrl-C or a budget stop).

    --engine may differ from the run's: the engine changes where calls run, not what they are.
    --max-usd / --max-judge-calls / --max-generated-tokens replace the run's budget limits
    (kept in the run): a run stopped by its budget goes on exactly where it stopped, and ends
    with the dataset a run started with the larger budget gets.
    """
    from activepref.core import runs

    budget = {"max_usd": max_usd, "max_judge_calls": max_judge_calls, "max_generated_tokens": max_generated_tokens}
    try:
        with _Bars("resume") as bars:
            history = runs.resume(run_dir, bars.callbacks(), engine=engine, budget=budget, wait_for_labels=not no_wait)
    except RunStopped as exc:
        _stopped(exc)
    except ActivePrefError as exc:
        _fail(exc)
    if history is None:
        console.print("nothing to do: every iteration is already finished")
        return
    _print_summary(history, run_dir)


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Iterations done, annotations used, judge failures, the bill and the latest metrics.

    The bill counts every call behind the dataset at the config's price table (`prices:`),
    cache hits included; the per-stage rows say how many calls the cache answered.
    """
    from dataclasses import asdict

    from activepref.core import runs
    from activepref.core.summary import format_summary

    try:
        st = runs.status(run_dir)
    except ActivePrefError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(asdict(st)))
        return
    table = Table(title=f"{run_dir}", show_header=False)
    table.add_row("method", st.method)
    table.add_row("seed", str(st.seed))
    table.add_row("iterations", f"{st.iterations_done} / {st.iterations_planned} done" + (f" (next step: after '{st.current}')" if st.current else ""))
    table.add_row("preference pairs", str(st.pairs))
    table.add_row("annotations (responses judged)", str(st.annotations))
    table.add_row("judge failures", str(st.failures))
    if st.stopped:
        table.add_row("state", f"{st.stopped} ({st.stopped_detail})" if st.stopped_detail else st.stopped)
    for k, v in st.last_metrics.items():
        table.add_row(k.replace("_", " "), f"{v:.4f}" if isinstance(v, float) else str(v))

    for label, value in format_summary(st.summary)[2:]:
        table.add_row(label, value)
    if st.annotation:
        _annotation_rows(table, st.annotation)
    console.print(table)


def _annotation_rows(table: Table, annotation: dict[str, Any]) -> None:
    tasks = annotation["tasks"]
    table.add_row("human pairs", f"{tasks['complete']} decided, {tasks['open']} open, {tasks['failed']} failed (skipped)")
    for name, counts in annotation["annotators"].items():
        table.add_row(f"  annotator {name}", f"{counts['labels']} labels, {counts['skips']} skips")
    agreement = annotation["agreement"]
    if agreement["items"]:
        parts = [f"{agreement['items']} pairs with 2+ labels"]
        if agreement["kappa"] is not None:
            parts.append(f"Cohen's kappa {agreement['kappa']:.3f}")
        if agreement["alpha"] is not None:
            parts.append(f"Krippendorff's alpha {agreement['alpha']:.3f}")
        table.add_row("agreement", ", ".join(parts))


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    fmt: Annotated[str | None, typer.Option("--format", help="parquet or jsonl (default: from the file name, .jsonl/.json -> jsonl, else parquet).")] = None,
    standard: Annotated[bool, typer.Option("--standard", help="Plain strings instead of chat messages.")] = False,
) -> None:
    """Write the run's preferences as a TRL preference dataset (prompt, chosen, rejected, ...)."""
    from activepref.core.export import export_run

    if fmt is None:
        fmt = "jsonl" if output.suffix.lower() in (".jsonl", ".json") else "parquet"
    if fmt not in ("parquet", "jsonl"):
        _fail(ActivePrefError(f"--format must be parquet or jsonl, not {fmt!r}"))
    try:
        n = export_run(run_dir, output, fmt, standard)  # type: ignore[arg-type]
    except ActivePrefError as exc:
        _fail(exc)
    console.print(f"wrote {n} preference rows to {output}", markup=False, highlight=False)


@app.command()
def evaluate(
    pool: Annotated[str, typer.Option(help="The candidate pool the dataset came from (.jsonl/.parquet, or 'builtin'); needs an oracle (else its score is used).")],
    dataset: Annotated[Path, typer.Option(help="A dataset written by `activepref export` (JSONL or Parquet).")],
    features: Annotated[Path | None, typer.Option(help=".npy feature matrix of the pool, if not in the pool file.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the reward model's initialisation and of the held-out pair sample.")] = 0,
) -> None:
    """Train a fresh reward model on a dataset alone and score it on the pool's other prompts.

    Independent of the ensemble that chose the pairs: a Bradley-Terry MLP on the pool's
    features (full-batch L-BFGS, at most 500 iterations) is scored against the hidden oracle on every prompt of the
    pool the dataset never saw. Prints a table, then one JSON line with rm_accuracy,
    rm_accuracy_hard (the held-out pairs with the smallest quarter of oracle gaps),
    label_accuracy (share of the dataset's pairs whose chosen has the higher oracle),
    mean_oracle_chosen, mean_oracle_rejected, pairs, prompts, heldout_prompts, heldout_pairs.

    Example:

    - `activepref export runs/x -o x.jsonl --format jsonl`
    - `activepref evaluate --pool pool.parquet --dataset x.jsonl`
    """
    import numpy as np

    from activepref.bench.dataset_quality import evaluate_pool_pairs, read_dataset_pairs
    from activepref.pools.sources import load_pool

    try:
        loaded = load_pool(pool, str(features) if features else None)
        chosen, rejected = read_dataset_pairs(loaded, dataset)
    except ActivePrefError as exc:
        _fail(exc)
    seen = set(np.unique(loaded.prompt_index[np.concatenate([chosen, rejected])]).tolist())
    heldout = [p for p in range(len(loaded.prompts)) if p not in seen]
    if not heldout:
        _fail(ActivePrefError(f"{dataset} covers every prompt of {pool}: no held-out prompt is left to score the reward model on"))
    quality = evaluate_pool_pairs(loaded, chosen, rejected, heldout, seed)
    table = Table("metric", "value")
    for key, value in json.loads(quality.to_json()).items():
        table.add_row(key, "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value)))
    console.print(table)
    if quality.reference != "oracle":
        err_console.print("note: the pool has no oracle column; its judge score stands in for it")
    print(quality.to_json())


@app.command()
def methods(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also list every method option: type, default, constraints and help.")] = False,
) -> None:
    """List every acquisition method with a one-line description and its presets.

    The preset columns give 001 Table 16's beta / zeta-decay / rho for the method, used
    when a run leaves those fields unset (`preset: paper-dpo`, the default, or
    `preset: paper-rm`; `preset: none` keeps beta 1, zeta-decay 0.99, rho 1000). Options go
    under `method_options:` in the config and are checked against these types.
    """
    from activepref.acquisition import available
    from activepref.presets import PRESETS, preset_settings

    table = Table("method", "family", "options", *(f"{p} (β/ζ-decay/ρ)" for p in PRESETS), "description")
    for m in available():
        opts = ", ".join(f"{k} (required)" if v is inspect.Parameter.empty else f"{k}={v}" for k, v in m.options().items())
        cells = []
        for preset in PRESETS:
            st = preset_settings(preset, m.name)
            cells.append("-" if st is None else f"{st.beta:g} / {st.zeta_decay:g} / {st.rho}")
        table.add_row(m.name, m.family, escape(opts), *cells, escape(m.description))
    console.print(table)
    if verbose:
        from activepref.acquisition import option_rows

        detail = Table("method", "option", "type", "default", "constraints", "help", title="method_options")
        for row in option_rows():
            detail.add_row(*(escape(cell) for cell in (row.method, row.option, row.type, row.default, row.constraints, row.help)))
        console.print(detail)


@app.command()
def check(
    config: ConfigOpt = None,
    pool: PoolOpt = None,
    features: FeaturesOpt = None,
    method: MethodOpt = None,
) -> None:
    """Validate a run config completely, without loading a model or calling a server.

    Checks every field, the method and its options, the judge kind, every backend and the
    embedder against the registries (`activepref plugins`), and reads every file the run would
    read (pool or prompts, features) as the run would. Prints what the run would start from;
    on the first problem prints one line naming the file, field and value, and exits with 2.
    """
    from activepref.preflight import check_config

    try:
        report = check_config(_config(config, pool=pool, features=features, method=method))
    except ActivePrefError as exc:
        _fail(exc)
    for line in report.lines:
        console.print(line, markup=False, highlight=False)
    console.print("ok", markup=False, highlight=False)


@app.command()
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: registrations and failures.")] = False,
) -> None:
    """List every registered method, judge, backend and embedder with its origin.

    Origin is `built-in` or the package that registered the name: an installed package adds
    entries through the entry-point group `activepref.plugins` (see the README, "Extending
    activepref"). A plugin that failed to load is listed with its error; the rest still work.
    Exits with 1 when a plugin failed to load.
    """
    from dataclasses import asdict

    from activepref.plugins import plugin_failures, registrations

    rows = registrations()
    failures = plugin_failures()
    if as_json:
        print(json.dumps({
            "registrations": [asdict(r) for r in rows],
            "failures": [{"plugin": f.plugin.name, "module": f.plugin.module, "package": f.plugin.package, "error": f.error} for f in failures],
        }))
    else:
        table = Table("kind", "name", "origin", "description")
        for r in rows:
            table.add_row(r.kind, escape(r.name), escape(r.origin), escape(r.description))
        console.print(table)
        for f in failures:
            err_console.print(
                f"[bold red]plugin failed to load:[/] {escape(f.plugin.name)} ({escape(f.plugin.module)}, "
                f"package {escape(f.plugin.package)}): {escape(f.error)}",
                highlight=False, soft_wrap=True,
            )
    if failures:
        raise typer.Exit(code=1)


@app.command()
def simulate(
    method: Annotated[str, typer.Option(help="Method, or a comma-separated list to compare; random is the reference.")] = "random,drts,ultrafeedback",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per method (seed, seed+1, ...); the table shows their spread.")] = 3,
    pool: Annotated[str, typer.Option(help="'auf' (a pool in seed 001's regime, written to the run directory), 'builtin' "
                                           "(80 MT-bench prompts with 5-8 candidates) or a pool file.")] = "auf",
    prompts: Annotated[int, typer.Option(min=2, help="Prompts of the 'auf' pool (30 candidates each).")] = 1024,
    noise: Annotated[float, typer.Option(min=0.0, help="Judge noise of the 'auf' pool (Likert points).")] = 0.5,
    dim: Annotated[int, typer.Option(min=1, help="Feature dimension of the 'auf' pool.")] = 64,
    out: Annotated[Path | None, typer.Option(help="Keep the pool and run directories here (default: a temporary dir).")] = None,
    batch_size: BatchOpt = None,
    iterations: ItersOpt = None,
    seed: Annotated[int, typer.Option(help="First seed; a seed fixes the held-out prompts and every random draw.")] = 0,
    beta: BetaOpt = None,
    plot: Annotated[bool, typer.Option(help="Write simulate.png: accuracy and margin vs annotations per method, seed range shaded.")] = True,
) -> None:
    """Compare methods on a pre-scored pool in about a minute, with the seeds' spread.

    Runs every method on every seed, then prints per method: pairs, judge calls, the selecting
    ensemble's held-out pairwise accuracy, the dataset's oracle gap (chosen minus rejected) and
    rm_accuracy of a fresh reward model trained on the exported dataset alone, each as
    mean ± sd [min, max] over seeds; and each method's difference from Random on the same seed
    ("*" where every seed agrees on the sign). Defaults: 1,024 prompts of seed 001's regime,
    batch 64, every prompt once, a lighter ensemble (10 heads, 50 steps); --pool builtin uses
    batch 8, lr 1e-3. Examples:

    - `activepref simulate`
    - `activepref simulate --method random,dts,deltaucb --seeds 5 --noise 1.0`
    - `activepref simulate --pool builtin --method random,dts`
    """
    from activepref.bench.simulate import (
        METRICS,
        DemoPool,
        method_spreads,
        paired_differences,
        pool_path,
        pool_title,
        seed_result,
    )
    from activepref.config import BUILTIN_POOL, SIMULATE_BUILTIN_PRESET, SIMULATE_DEMO_PRESET
    from activepref.core import runs

    names = [m.strip() for m in method.split(",") if m.strip()]
    base = out or Path(tempfile.mkdtemp(prefix="activepref-sim-"))
    demo = DemoPool(prompts=prompts, dim=dim, noise=noise)
    preset = SIMULATE_BUILTIN_PRESET if pool == BUILTIN_POOL else SIMULATE_DEMO_PRESET
    results = []
    histories: dict[str, list[list[dict[str, Any]]]] = {}
    try:
        path = pool_path(pool, base, demo)
        for name in names:
            for s in range(seed, seed + seeds):
                flags = {"method": name, "pool": path, "batch_size": batch_size, "iterations": iterations, "seed": s, "beta": beta}
                cfg = _config(None, **{**preset, **{k: v for k, v in flags.items() if v is not None}})
                run_dir = base / f"{name}-seed{s}"
                with _Bars(f"{name} seed {s}") as bars:
                    history = runs.run(cfg, run_dir, bars.callbacks())
                results.append(seed_result(name, s, history, run_dir))
                histories.setdefault(name, []).append(history)
    except ActivePrefError as exc:
        _fail(exc)
    except ValueError as exc:  # a bad demo-pool parameter
        _fail(ActivePrefError(str(exc)))
    title = pool_title(pool, demo)
    spreads = method_spreads(results)
    # Fits 80 columns (output to a file or pipe): the pairs go under the method's name.
    table = Table(Column("method", no_wrap=True), Column("calls", no_wrap=True), *[Column(h, no_wrap=True) for h in METRICS.values()])
    for name, sp in spreads.items():
        mine = [r for r in results if r.method == name]
        table.add_row(f"{name}\n{sum(r.pairs for r in mine) / len(mine):.0f} pairs", _same_or_range([r.annotations for r in mine]),
                      *[sp[k].text() for k in METRICS], end_section=True)
    console.print(f"simulation on {escape(title)}: mean ± sd, then min to max over {seeds} seed(s)", markup=False, highlight=False)
    console.print(table)
    diffs = paired_differences(results)
    if diffs:
        dt = Table(Column("method", no_wrap=True), *[Column(h, no_wrap=True) for h in METRICS.values()])
        for name, d in diffs.items():
            dt.add_row(name, *[d[k].text(signed=True) + (" *" if d[k].one_sided else "") for k in METRICS], end_section=True)
        console.print("minus Random on the same seed (* = every seed has the same sign)")
        console.print(dt)
    if plot:
        from activepref.extras import MissingExtraError
        from activepref.plots import plot_learning_curves

        try:
            png = plot_learning_curves(histories, base / "simulate.png", f"activepref simulate: {title}")
            console.print(f"plot: {png}", markup=False, highlight=False)
        except MissingExtraError as exc:
            console.print(f"no plot ({exc})", markup=False, highlight=False)
    console.print(f"run directories: {base}", markup=False, highlight=False)


def _same_or_range(values: list[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else f"{min(values)}-{max(values)}"


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="Output folder: run/, dataset.parquet, summary.md, quickstart.png.")] = Path("quickstart"),
    prompts: Annotated[int, typer.Option(help="MT-bench prompts to use (two per category by default).")] = 16,
    method: MethodOpt = None,
    seed: SeedOpt = None,
    max_tokens: Annotated[int, typer.Option(help="Maximum tokens per generated response.")] = 96,
    qwen: Annotated[bool, typer.Option(help="Use Qwen2.5-Coder-0.5B (generator and judge) when its packages are installed.")] = True,
    engine: EngineOpt = None,
) -> None:
    """The whole loop for real, offline: local models generate, embed and judge.

    Generates candidates for MT-bench prompts with shipped small models, embeds them with
    the model's last layer, selects pairs with DTS, judges only those with the Likert judge
    from local logits, retrains the ensemble, and writes a TRL dataset, a summary and a plot.
    Interrupted? Run the same command again: it resumes without repeating a model call.
    """
    from activepref.core import runs
    from activepref.core.export import export_run, preference_records
    from activepref.core.store import RunStore
    from activepref.core.summary import format_summary, run_summary
    from activepref.live.quickstart import quickstart_config

    run_dir = out / "run"
    _quiet_model_loading()
    try:
        with _Bars("quickstart") as bars:
            if RunStore.exists(run_dir):
                runs.resume(run_dir, bars.callbacks(), engine=engine)
            else:
                cfg = quickstart_config(out, prompts, method or "dts", seed or 0, max_tokens, qwen)
                runs.run(_with_engine(cfg, engine), run_dir, bars.callbacks())
        export_run(run_dir, out / "dataset.parquet", "parquet")
        export_run(run_dir, out / "dataset.jsonl", "jsonl")
        with RunStore.open_readonly(run_dir) as store:
            summary = run_summary(store)
            records = preference_records(store)
    except ActivePrefError as exc:
        _fail(exc)
    rows = format_summary(summary)
    table = Table(title="quickstart", show_header=False)
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    (out / "summary.md").write_text(
        "| | |\n|---|---|\n" + "".join(f"| {label} | {value} |\n" for label, value in rows), encoding="utf-8"
    )
    try:
        from activepref.plots import plot_run

        png = plot_run(records, summary, out / "quickstart.png", "activepref quickstart")
        console.print(f"plot: {png}", markup=False, highlight=False)
    except ActivePrefError as exc:
        console.print(f"no plot ({exc})", markup=False, highlight=False)
    console.print(f"dataset: {out / 'dataset.parquet'} ({len(records)} pairs, TRL preference format)", markup=False, highlight=False)


@app.command()
def apl(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="APL config (YAML); every field is explained in examples/apl.yaml.")] = None,
    quickstart: Annotated[bool, typer.Option("--quickstart", help="Offline demo: SmolLM2-135M policy, shipped judge, 40 MT-bench prompts, 2 rounds, all four acquisitions.")] = False,
    out: Annotated[Path, typer.Option(help="Output folder: runs/<acquisition>-seed<k>/, results.csv, summary.md, winrate.png.")] = Path("apl"),
    acquisitions: Annotated[str | None, typer.Option(help="Comma-separated subset of random,entropy,certainty,hybrid (overrides the config).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, one run per acquisition and seed (overrides the config).")] = None,
    rounds: Annotated[int | None, typer.Option(help="Acquisition rounds T (overrides the config).")] = None,
    qwen: Annotated[bool, typer.Option(help="--quickstart: judge with Qwen2.5-Coder-0.5B when its packages are installed.")] = True,
) -> None:
    """Active preference learning for DPO with the policy in the loop (seed 004).

    Each round: sample S prompts, generate two completions per prompt from the current
    policy, rank prompts by the acquisition -- entropy (predictive entropy of the policy),
    certainty (|r(x,y1) - r(x,y2)| with the implicit DPO reward r = beta log p_theta/p_theta0),
    hybrid (entropy first, then certainty) or random -- send the top M pairs to the judge,
    and fine-tune with TRL's DPOTrainer (from theta0 each round, as in the paper). After each
    round the policy's win rate against theta0 on held-out prompts is judged.

    Interrupted? Run the same command again: finished rounds are kept and no model or judge
    call is repeated. Example: `activepref apl --quickstart --out apl-demo`.
    """
    from activepref.apl.config import load_apl_config
    from activepref.apl.driver import run_apl
    from activepref.apl.quickstart import quickstart_apl_config

    if (config is None) == (not quickstart):
        _fail(ActivePrefError("give exactly one of --config FILE or --quickstart"))
    overrides: dict[str, Any] = {}
    if acquisitions:
        overrides["acquisitions"] = [a.strip() for a in acquisitions.split(",") if a.strip()]
    if seeds:
        try:
            overrides["seeds"] = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            _fail(ActivePrefError(f"--seeds: expected comma-separated integers, got {seeds!r}"))
    if rounds is not None:
        overrides["rounds"] = rounds
    _quiet_model_loading()
    try:
        if quickstart:
            out.mkdir(parents=True, exist_ok=True)
            cfg = quickstart_apl_config(out, use_qwen=qwen, overrides=overrides)
        else:
            cfg = load_apl_config(config, overrides)
        total = len(cfg.acquisitions) * len(cfg.seeds) * cfg.rounds
        with _Bars("apl") as bars:
            done = {"n": 0}
            bars.update(f"{total} rounds to run", completed=0, total=total)

            def on_stage(acq: str, seed: int, round_: int, stage: str) -> None:
                bars.update(f"{acq} seed {seed} round {round_}: {stage}")

            def on_run_done(results: list[Any]) -> None:
                done["n"] += len(results)
                last = results[-1]
                rate = "n/a" if last.win_rate is None else f"{last.win_rate:.2f}"
                bars.update(f"{last.acquisition} seed {last.seed}: win rate {rate}", completed=done["n"], total=total)

            written = run_apl(cfg, out, on_stage=on_stage, on_run_done=on_run_done,
                              title="activepref apl --quickstart" if quickstart else "activepref apl")
    except ActivePrefError as exc:
        _fail(exc)
    console.print(Path(written["summary"]).read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(f"results: {written['results']}", markup=False, highlight=False)
    if written.get("plot"):
        console.print(f"plot: {written['plot']}", markup=False, highlight=False)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "method_options":
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@app.command()
def bench(
    pool: Annotated[str, typer.Option(help="Candidate pool (.jsonl/.parquet) or 'builtin'.")],
    methods: Annotated[str, typer.Option(help="Comma-separated methods, e.g. random,dts,dopt (random is the reference).")],
    budget: Annotated[int, typer.Option(help="Preference pairs acquired per run.")],
    out: Annotated[Path, typer.Option(help="Report directory (runs/ inside); rerun to resume.")],
    seeds: Annotated[int, typer.Option(help="Seeds per method (0..N-1).")] = 3,
    batch_size: BatchOpt = None,
    workers: Annotated[int, typer.Option(help="Runs in parallel processes.")] = 2,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML with shared run settings (enn, beta, eval_fraction, ...) and per-method options (method_options: {delta_pair: {strong: A, weak: B}}).")] = None,
    engine: EngineOpt = None,
) -> None:
    """Run several methods side by side on one pool, several seeds each, and write a report.

    Writes results.csv (method, seed, iteration, annotations, accuracy, spearman_loss,
    best_of_n, ...), summary.md (mean ± 95% CI per method, annotations needed to reach
    Random's final accuracy, Table-21-style chosen/rejected scores), curves.png and
    table21.png. Interrupted? Run the same command again: finished runs are skipped.
    """
    from activepref.bench import run_bench
    from activepref.config import load_yaml

    names = [m.strip() for m in methods.split(",") if m.strip()]
    overrides: dict[str, Any] = {}
    method_options: dict[str, Any] = {}
    engine_section: Any = None
    if config is not None:
        try:
            loaded = load_yaml(config) or {}
        except ActivePrefError as exc:
            _fail(exc)
        if not isinstance(loaded, dict):
            _fail(ActivePrefError(f"{config}: expected a mapping of fields"))
        method_options = loaded.pop("method_options", None) or {}
        engine_section = loaded.pop("engine", None)
        if not isinstance(method_options, dict) or not all(isinstance(v, dict) for v in method_options.values()):
            _fail(ActivePrefError(f"{config}: method_options: expected a mapping of method name to its options"))
        overrides = _flatten(loaded)
    done = {"n": 0}

    def progress(event: Any) -> None:
        done["n"] += 1
        console.print(f"[{event.done}/{event.total}] {event.method} seed {event.seed}: {event.state}" + (f" ({event.error})" if event.error else ""), markup=False, highlight=False)

    try:
        from pydantic import ValidationError

        from activepref.config import EngineConfig

        try:
            engine_cfg = EngineConfig.model_validate(engine_section or {})
        except ValidationError as exc:
            raise ConfigError(f"{config}: engine: {exc.errors()[0]['msg']}") from exc
        report = run_bench(pool, names, seeds, budget, out, batch_size=batch_size or 16, workers=workers, overrides=overrides, progress=progress,
                           method_options=method_options, engine=engine_cfg.with_kind(engine))
    except ActivePrefError as exc:
        _fail(exc)
    from activepref.bench.files import JUDGE_QUALITY_FILE, read_judge_quality
    from activepref.plots import plots_unavailable

    names = ("summary.md", "results.csv", "curves.png", "table21.png", "dataset_curves.png", JUDGE_QUALITY_FILE)
    written = ", ".join(str(report / n) for n in names if (report / n).exists())
    if (report / JUDGE_QUALITY_FILE).exists():
        table = Table(title="the pool's judge against the verifiers (pairs of one prompt)")
        for column in ("instruction kind", "agreement", "pairs"):
            table.add_column(column)
        for row in read_judge_quality(report / JUDGE_QUALITY_FILE):
            table.add_row(Text(row["kind"]), f"{row['agreement']:.3f}", str(row["pairs"]))
        console.print(table)
    console.print(f"report: {written}", markup=False, highlight=False)
    missing = plots_unavailable()
    if missing is not None:
        err_console.print(f"no plots: {missing}", markup=False, highlight=False)


@app.command()
def estimate(
    config: ConfigOpt = None,
    pool: PoolOpt = None,
    method: MethodOpt = None,
    batch_size: BatchOpt = None,
    iterations: ItersOpt = None,
) -> None:
    """Expected calls, tokens and dollars of a run, before anything is called.

    Reads the prompts (or the pool), runs the method once on random rewards to count what it
    asks the judge for, and prices generation and judge calls with the config's `prices:`
    table (batch discount in judge mode batch/file). Generation is counted at `max_tokens`
    (an upper bound) and tokens at 4 characters each. The last line is one JSON object:
    judge_calls, generation_calls, input_tokens, output_tokens, usd (and more).

    Example: `activepref estimate -c run.yaml`
    """
    from activepref.core.estimate import estimate_run

    try:
        cfg = _config(config, pool=pool, method=method, batch_size=batch_size, iterations=iterations)
        est = estimate_run(cfg)
    except ActivePrefError as exc:
        _fail(exc)
    t, per = est.total, est.per_iteration
    table = Table(title=f"estimate: {cfg.method}, {est.iterations} iterations of {est.prompts_per_iteration} prompts", show_header=True)
    table.add_column("")
    table.add_column("per iteration", justify="right")
    table.add_column("run", justify="right")
    rows = [
        ("generation calls", per.generation_calls, t.generation_calls),
        ("generated tokens (at most)", per.generated_tokens, t.generated_tokens),
        ("judge calls", per.judge_calls, t.judge_calls),
        ("input tokens", per.input_tokens, t.input_tokens),
        ("output tokens", per.output_tokens, t.output_tokens),
    ]
    if t.embedding_calls:  # a paid embedder: a vector per response
        rows.insert(3, ("embedding vectors", per.embedding_calls, t.embedding_calls))
    for label, a, b in rows:
        table.add_row(label, f"{a:,}", f"{b:,}")
    table.add_row(f"USD (judge {est.judge_mode})", f"{per.usd:.4f}", f"{t.usd:.4f}")
    console.print(table)
    for note in est.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    print(json.dumps(est.to_json()))


@app.command()
def annotate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory whose judge is human or routed.")],
    host: Annotated[str, typer.Option(help="Interface to listen on. Keep 127.0.0.1 unless annotators connect from other machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    add_annotator: Annotated[
        list[str] | None,
        typer.Option("--add-annotator", help="Register NAME (repeatable) and print their personal link, then exit. "
                     "Again for an existing NAME: a new link, the old one stops working."),
    ] = None,
    lease_s: Annotated[float, typer.Option(help="Seconds a shown pair stays reserved for its annotator.")] = 300.0,
) -> None:
    """Label pairs in the browser: the web app for a run's human judge.

    First give each person a link: `activepref annotate RUN --add-annotator alice` prints
    http://HOST:PORT/?token=... (only a digest of the token is stored). Then serve:
    `activepref annotate RUN`. Each annotator sees the prompt and two responses side by side
    (order randomised per person), and answers A / B / tie / skip (keys 1 / 2 / 3 / s) with an
    optional note. Labels are committed on submit into the run store, while the run itself
    may be going (or stopped at 'awaiting labels'); `activepref status RUN` shows counts and
    agreement.
    """
    from activepref.annotate.queue import AnnotationQueue

    try:
        queue = AnnotationQueue.open(run_dir)
        try:
            if add_annotator:
                for name in add_annotator:
                    token = queue.add_annotator(name)
                    print(f"{name}: http://{host}:{port}/?token={token}")
                return
            names = queue.annotators()
        finally:
            queue.close()
        from activepref.core.runs import stored_config
        from activepref.core.store import RunStore

        with RunStore.open_readonly(run_dir) as store:
            kind = stored_config(store).judge.kind
    except ActivePrefError as exc:
        _fail(exc)
    if kind not in ("human", "routed"):
        err_console.print(f"note: this run's judge is {kind!r}, not human or routed: no pairs will come to this page",
                          markup=False, highlight=False, soft_wrap=True)
    from activepref.annotate.app import serve

    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"warning: listening on {host}: anyone who can reach port {port} can try tokens; use HTTPS in front of it "
                          "(a reverse proxy) when this leaves your machine", markup=False, highlight=False)
    if not names:
        err_console.print(f"no annotators yet: `activepref annotate {run_dir} --add-annotator NAME` prints a link",
                          markup=False, highlight=False)
    err_console.print(f"annotation app for {run_dir} on http://{host}:{port}/ ({len(names)} annotator(s)); Ctrl-C stops it",
                      markup=False, highlight=False, soft_wrap=True)
    serve(run_dir, host, port, lease_s)


judge_file_app = typer.Typer(
    help=(
        "Judge offline on your own GPUs: a run with `judge: {mode: file}` stops at each judge step with its requests in\n"
        "RUN/judge-files/*.requests.jsonl (OpenAI batch format). Run them, e.g.\n\n"
        "`vllm run-batch -i RUN/judge-files/judge-00001-....requests.jsonl -o results.jsonl --model MODEL`,\n\n"
        "then `activepref judge-file import RUN results.jsonl` and `activepref resume RUN`."
    ),
    no_args_is_help=True,
)
app.add_typer(judge_file_app, name="judge-file")


def _run_journal(run_dir: Path) -> tuple[Any, Any]:
    """(batch journal, request cache) of a run (both in its request cache file)."""
    from activepref.core.batch_journal import BatchJournal
    from activepref.core.cache import RequestCache
    from activepref.core.runs import stored_config
    from activepref.core.store import RunStore

    with RunStore.open_readonly(run_dir) as store:
        cfg = stored_config(store)
    cache = RequestCache(cfg.cache_path)
    return BatchJournal(cache.path), cache


@judge_file_app.command("export")
def judge_file_export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (stopped at a judge step in mode file).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL file to write (OpenAI batch input format).")],
) -> None:
    """Write every judge request the run waits for into one file (vllm run-batch reads it)."""
    from activepref.core.judge_files import export_requests

    try:
        journal, _ = _run_journal(run_dir)
        n = export_requests(journal, output)
    except ActivePrefError as exc:
        _fail(exc)
    console.print(f"wrote {n} judge request(s) to {output}", markup=False, highlight=False)


@judge_file_app.command("import")
def judge_file_import(
    run_dir: Annotated[Path, typer.Argument(help="Run directory the requests came from.")],
    results: Annotated[Path, typer.Argument(help="Results JSONL (OpenAI batch output format, as vllm run-batch writes it).")],
) -> None:
    """Bring judge results into the run's request cache; then `activepref resume RUN`.

    Every line is checked first (a malformed one is named by file and line, and nothing is
    imported). Failed lines are sent again as a new request file on resume, up to
    judge.batch.max_retries times, then recorded as judge failures.
    """
    from activepref.core.judge_files import import_results

    try:
        journal, cache = _run_journal(run_dir)
        report = import_results(journal, cache, results)
    except ActivePrefError as exc:
        _fail(exc)
    console.print(
        f"imported {report.answered} answer(s) ({report.already} already there), {report.failed} failed line(s), "
        f"{report.unknown} unknown custom_id(s); now run `activepref resume {run_dir}`", markup=False, highlight=False,
    )
    for err in report.errors:
        console.print(f"  failed: {err}", markup=False, highlight=False)


@app.command("make-pool")
def make_pool(
    output: Annotated[Path, typer.Option("--output", "-o", help="Pool file to write (.parquet or .jsonl; auf: .parquet).", metavar="<path>")],
    regime: Annotated[str, typer.Option(help="'synthetic' (a tanh teacher over Gaussian features, 6 models) or 'auf' "
                                             "(seed 001's regime: 30 candidates per prompt from a 30-model quality ladder, "
                                             "4 aspects judged 1-5; see the README).")] = "synthetic",
    prompts: Annotated[int, typer.Option(help="Number of prompts.")] = 512,
    candidates: Annotated[int | None, typer.Option(help="Maximum candidates per prompt (synthetic, default 8; auf: always 30).")] = None,
    min_candidates: Annotated[int | None, typer.Option(help="Minimum candidates per prompt (synthetic; default: = candidates).")] = None,
    dim: Annotated[int | None, typer.Option(help="Feature dimension (default: synthetic 64, auf 256).")] = None,
    noise: Annotated[float | None, typer.Option(help="Judge noise: synthetic, std in oracle-standardised units (default 0.3); "
                                                     "auf, std per aspect in Likert points (default 0.5).")] = None,
    ladder_spread: Annotated[float, typer.Option(help="auf: model effect from +spread (best model) to -spread (worst).")] = 1.0,
    features_file: Annotated[Path | None, typer.Option(help="auf: write the features to this .npy instead of a Parquet column "
                                                            "(for big pools; give it to a run as `features:`).", metavar="<path>")] = None,
    features_dtype: Annotated[str, typer.Option(help="auf: dtype of --features-file, float32 or float16.")] = "float32",
    prompt_features: Annotated[bool, typer.Option(help="auf: add a prompt_features column (the prompt-only embedding; BAL-PM "
                                                       "uses it instead of the mean of the prompt's candidates).")] = False,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Write a synthetic candidate pool with a hidden oracle reward (for benchmarks and tests).

    Examples:

    - `activepref make-pool -o pool.parquet --prompts 1024`
    - `activepref make-pool --regime auf -o auf.parquet --prompts 4096 --noise 0.5`
    - `activepref make-pool --regime auf -o big.parquet --prompts 60000 --features-file big.npy --features-dtype float16`
    """
    import time

    started = time.perf_counter()
    if regime == "synthetic":
        from activepref.pools.sources import synthetic_pool, write_pool

        if features_file is not None or prompt_features:
            _fail(ActivePrefError("--features-file and --prompt-features are for --regime auf"))
        pool = synthetic_pool(prompts, candidates or 8, dim or 64, 0.3 if noise is None else noise, seed, min_candidates)
        write_pool(pool, output)
        console.print(f"wrote {len(pool.responses)} candidates for {len(pool.prompts)} prompts to {output}", markup=False, highlight=False)
        return
    if regime != "auf":
        _fail(ActivePrefError(f"--regime must be 'synthetic' or 'auf' (got {regime!r})"))
    from activepref.pools.auf import AUF_MODELS, AUFRegime, write_auf_pool

    if candidates not in (None, len(AUF_MODELS)) or min_candidates not in (None, len(AUF_MODELS)):
        _fail(ActivePrefError(f"--regime auf has one candidate from each of its {len(AUF_MODELS)} models; leave --candidates unset"))
    try:
        spec = AUFRegime(n_prompts=prompts, dim=dim or 256, noise=0.5 if noise is None else noise, ladder_spread=ladder_spread, seed=seed)
        summary = write_auf_pool(spec, output, features_file, features_dtype, prompt_features)
    except ValueError as exc:
        _fail(ActivePrefError(str(exc)))
    where = f"features in {features_file}" if features_file else "features in the Parquet column"
    console.print(
        f"wrote {summary['rows']} candidates ({prompts} prompts x {summary['candidates']} models, d {summary['dim']}) to {output}; "
        f"{where}; {100 * float(summary['tie_share']):.1f}% of same-prompt pairs tie on the judge score; "
        f"{time.perf_counter() - started:.1f} s",
        markup=False, highlight=False,
    )


# Commands that read a run or a config and compute nothing with torch: they start without it.
READ_ONLY_COMMANDS = frozenset({"status", "export", "check", "methods", "plugins", None})


def main() -> None:  # pragma: no cover
    import os

    # The CLI draws its own progress bars; keep the model loaders' bars out of the way. tqdm
    # reads TQDM_DISABLE once, when it is first imported (transformers' GGUF conversion bar),
    # so it is set here, before any command imports a model library.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import warnings

    # A deprecation aimed at the user (e.g. the flat judge config) is one line, not a source excerpt.
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("activepref.backends.openai_batch").setLevel(logging.INFO)  # a line per batch poll: progress
    logging.getLogger("activepref.judges.human").setLevel(logging.INFO)  # a line as human labels come in: progress
    import sys

    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if command not in READ_ONLY_COMMANDS:  # these never train: spare them torch's import (~1.3 s)
        from activepref.model.numerics import flush_denormals_in_every_thread

        flush_denormals_in_every_thread()  # before any torch work: worker threads inherit the mode
    try:
        app()
    except Exception as exc:  # a fault of the machine (disk full, read-only, damaged file) is one line, not a traceback
        from activepref.errors import environment_error

        message = environment_error(exc)
        if message is None:
            raise
        err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
