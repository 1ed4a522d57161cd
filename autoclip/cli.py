"""The ``autoclip`` command line: each command parses, calls one library function, prints.

Errors a user can cause end with one line naming the fix and a non-zero exit code: 2 for
usage errors (bad options, a TARGET that cannot be loaded), 1 for failures while running
(once the TARGET is loaded, even an invalid value found at run time is a run-time failure:
it gets no Usage banner). Ctrl-C prints one line, with how to resume, and exits 130 (the
shell's code for SIGINT). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import click

from autoclip import report, report_tune, serialize
from autoclip._cli_support import (
    _Ctx,
    _emit,
    _exit_if_nothing_chosen,
    _load,
    _OneLine,
    _out_option,
    _progress,
    _run,
    _weights,
)

DEFAULT_STORAGE = "autoclip.journal"  # in the working directory, so a rerun resumes


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="autoclip-tuner", prog_name="autoclip")
def main(debug: bool) -> None:
    """Measure gradients and choose a gradient-clipping setting for a model.

    \b
    Example:
      autoclip studies                  # bundled benchmark tasks
      autoclip probe digits_mlp         # warm-up statistics and a proposal
      autoclip tune digits_mlp          # Optuna search; rerun to resume
    """
    _Ctx.debug = debug
    if not debug:  # a warning is one line too (a torn journal record, a dead worker)
        warnings.formatwarning = lambda message, *args, **kw: f"Warning: {message}\n"
    import optuna

    # Trial-by-trial INFO lines drown the progress bar and the table; --debug keeps them.
    optuna.logging.set_verbosity(optuna.logging.INFO if debug else optuna.logging.WARNING)
    # Optuna's records come from child loggers, so the filter goes on its handlers.
    for handler in logging.getLogger("optuna").handlers:
        for f in [f for f in handler.filters if isinstance(f, _OneLine)]:
            handler.removeFilter(f)
        if not debug:
            handler.addFilter(_OneLine())


@main.command()
@click.argument("target")
@click.option(
    "--trials",
    default=9,
    show_default=True,
    type=click.IntRange(min=1),
    help="Trials (configurations) in the study, in total across workers and reruns; "
    "most are pruned at a rung.",
)
@click.option(
    "--steps", type=click.IntRange(min=1), help="Training steps per trial [default: the task's]."
)
@click.option(
    "--mode",
    type=click.Choice(["pareto", "single"]),
    default="pareto",
    show_default=True,
    help="Pareto over (final loss, speed, instability), or final "
    "loss alone with pruning and an instability constraint.",
)
@click.option(
    "--weights",
    callback=_weights,
    metavar="F,S,I",
    help="Weights of final loss, speed and instability for choosing from the Pareto "
    "front [default: its knee].",
)
@click.option(
    "--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Sampler seed."
)
@click.option(
    "--storage",
    envvar="AUTOCLIP_STORAGE",
    default=DEFAULT_STORAGE,
    show_default=True,
    help="Journal file path or Optuna storage URL "
    "(postgresql://...); env AUTOCLIP_STORAGE. Use ':memory:' for none.",
)
@click.option(
    "--study",
    "study_name",
    envvar="AUTOCLIP_STUDY",
    help="Study name [default: autoclip-<task name>]; rerunning resumes it.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Local worker processes.",
)
@click.option(
    "--probe-steps",
    type=click.IntRange(min=2),
    help="Warm-up steps of the probe [default: a tenth of the steps, within 20..100].",
)
@click.option("--tune-lr", is_flag=True, help="Also search a learning-rate multiplier.")
@click.option("--resume-anyway", is_flag=True, help="Resume the study though its task changed.")
@click.option(
    "--full-length",
    is_flag=True,
    help="Train every trial for the full length (no successive halving over rungs).",
)
@_out_option("Where result.json, report.md and plots go; env AUTOCLIP_OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON only.")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bar; print only the chosen config as JSON."
)
@_run
def tune(
    target, trials, steps, mode, weights, seed, storage, study_name, workers, probe_steps,
    tune_lr, resume_anyway, full_length, out_dir, as_json, quiet
):  # fmt: skip
    """Search clipping settings for TARGET with Optuna and report the choice.

    TARGET is path/to/file.py:name, package.module:name, or a bundled study name; name is
    an autoclip.Task or a function returning one.

    \b
    Example:
      autoclip tune digits_mlp --trials 12
      autoclip tune my_model.py:make_task --storage postgresql://me@db/autoclip --workers 2
    """
    from autoclip.search import tune as run_tune

    task = _load(target)
    progress, close = _progress("trials", not (quiet or as_json))
    try:
        result = run_tune(
            target if workers > 1 else task,
            n_trials=trials,
            steps=steps,
            mode=mode,
            weights=weights,
            storage=None if storage == ":memory:" else storage,
            study_name=study_name,
            seed=seed,
            workers=workers,
            probe_steps=probe_steps,
            tune_lr=tune_lr,
            fidelity=not full_length,
            progress=progress,
            resume_anyway=resume_anyway,
        )
    finally:
        close()
    files = report_tune.write_tune_report(result, Path(out_dir)).values()
    if as_json:
        click.echo(result.to_json())
    elif quiet:  # one line for scripts: the chosen configuration
        click.echo(serialize.dumps(result.best_config))
    else:
        click.echo(report_tune.format_tune(result))
        click.echo("wrote " + ", ".join(str(f) for f in files))
    _exit_if_nothing_chosen(result)


@main.command()
@click.argument("target")
@click.option(
    "--steps",
    default=None,
    type=click.IntRange(min=2),
    help="Warm-up steps (default: a tenth of --budget; 100 with --budget 0).",
)
@click.option(
    "--budget",
    default=500,
    show_default=True,
    type=click.IntRange(min=0),
    help="Optimizer steps in all: warm-up + measured races (0: statistics only, no races).",
)
@_out_option("Where proposal.json and plots go; env AUTOCLIP_OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the proposal as JSON only.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_run
def probe(target, steps, budget, out_dir, as_json, quiet):
    """Measure TARGET's response to the threshold, print the proposed clipper and the stats.

    TARGET is path/to/file.py:name, package.module:name, or a bundled study name. The
    measurement is what ``autoclip.suggest`` does: a short warm-up, then short races of
    candidate max_norm values from the same start; the response curve is drawn to
    proposal_response.png.

    \b
    Example:
      autoclip probe digits_mlp
      autoclip probe my_model.py:make_task --budget 300 --json > proposal.json
    """
    from autoclip.propose import suggest_task

    task = _load(target)
    progress, close = _progress("measuring", not (quiet or as_json))
    try:
        proposal = suggest_task(task, steps, budget=budget, progress=progress)
    finally:
        close()
    files = report.write_probe_report(proposal, Path(out_dir), prefix="proposal").values()
    if as_json:
        click.echo(proposal.to_json())
    else:
        if proposal.stats is not None:
            click.echo(proposal.stats.summary() + "\n")
        click.echo(proposal.summary())
        _emit(f"{proposal.steps_spent} optimizer steps spent", quiet)
        _emit("wrote " + ", ".join(str(f) for f in files), quiet)


@main.command(name="report")
@click.option(
    "--storage",
    envvar="AUTOCLIP_STORAGE",
    default=DEFAULT_STORAGE,
    show_default=True,
    help="Journal file path or storage URL; env AUTOCLIP_STORAGE.",
)
@click.option(
    "--study",
    "study_name",
    envvar="AUTOCLIP_STUDY",
    help="Study name [default: the storage's only study].",
)
@click.option(
    "--weights",
    callback=_weights,
    metavar="F,S,I",
    help="Weights for choosing from the Pareto front [default: its knee].",
)
@_out_option("Where result.json, report.md and plots go; env AUTOCLIP_OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON only.")
@_run
def report_cmd(storage, study_name, weights, out_dir, as_json):
    """Summarise an existing study from its storage and write its plots.

    \b
    Example:
      autoclip report                                   # ./autoclip.journal
      autoclip report --storage postgresql://me@db/autoclip --study autoclip-digits_mlp
    """
    from autoclip.search import load_result

    if "://" not in storage and not Path(storage).exists():
        raise click.BadParameter(
            f"no storage file {storage!r}; run `autoclip tune` first or pass --storage",
            param_hint="--storage",
        )
    result = load_result(storage, study_name, weights=weights)
    files = report_tune.write_tune_report(result, Path(out_dir)).values()
    if as_json:
        click.echo(result.to_json())
    else:
        click.echo(report_tune.format_tune(result))
        click.echo("wrote " + ", ".join(str(f) for f in files))
    _exit_if_nothing_chosen(result)


@main.group(invoke_without_command=True)
@click.pass_context
def studies(ctx):
    """List the bundled benchmark studies (each usable as a TARGET), or run one.

    \b
    Example:
      autoclip studies
      autoclip studies run digits_mlp --seeds 3
    """
    if ctx.invoked_subcommand is not None:
        return
    from autoclip.task import bundled_studies

    found = bundled_studies()
    width = max((len(n) for n in found), default=0)
    for name, line in sorted(found.items()):
        click.echo(f"{name.ljust(width)}  {line}")


@studies.command(name="run")
@click.argument("names", nargs=-1, required=True)
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--smoke", is_flag=True, help="A tiny, fast subset.")
@click.option(
    "--out",
    "out_dir",
    default="studies/results",
    show_default=True,
    type=click.Path(file_okay=False),
)
@_run
def studies_run(names, seeds, smoke, out_dir):
    """Run the comparison of clipping arms on bundled studies and write its tables.

    \b
    Example:
      autoclip studies run digits_mlp lstm_adding --seeds 3
    """
    from autoclip.task import bundled_studies

    known = bundled_studies()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.BadParameter(f"unknown studies {unknown}; choose from {sorted(known)}")
    from importlib.metadata import entry_points

    runners = {ep.name: ep for ep in entry_points(group="autoclip.study_runners")}
    if "compare" not in runners:
        raise click.ClickException(
            "the study runner is not installed; install autoclip-tuner from its repository "
            "(pip install -e .) to run the studies"
        )
    argv = ["--tasks", *names, "--seeds", str(seeds), "--out", out_dir]
    code = runners["compare"].load()(argv + (["--smoke"] if smoke else []))
    if code:
        raise click.ClickException(f"the comparison finished with errors (exit code {code})")


if __name__ == "__main__":  # pragma: no cover
    main()
