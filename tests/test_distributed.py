"""Many workers on one study: PostgreSQL (a real server these tests start) and journal files.

Every multi-process test runs twice: on a journal file (one machine, no heartbeat: a dead
worker is found by its process id) and on PostgreSQL (Optuna's RDB storage with heartbeats).
The PostgreSQL runs are marked ``postgres`` and skip, with the reason, only where no server
binary exists; ``tests/_postgres.py`` starts the server as the ``postgres`` OS user on a free
port on 127.0.0.1, in a temporary folder, and removes it afterwards.

Workers are real processes (``subprocess`` running ``tune``, or ``tune(workers=2)``), killed
with real signals; the tests read the outcome back from the storage with Optuna.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import _postgres
import optuna
import pytest
from optuna.trial import TrialState

import autoclip
from autoclip.search import load_result, open_storage, tune
from autoclip.search._space import first_trials
from autoclip.search._study import _proposal_of

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning", "ignore::FutureWarning"
)

HERE = Path(__file__).resolve().parent
FAST = f"{HERE / '_tasks.py'}:make_task"  # 30 steps: well under a second a trial
SLOW = f"{HERE / '_tasks.py'}:slow_task"  # seconds a trial: time to kill a worker mid-trial
SLOW_STEPS = 1000  # most of a second a trial on an idle core
ATTR = "autoclip."
HEARTBEAT = 1  # seconds; a trial silent for 3 heartbeats is stale
# Full-length trials: these tests are about faults, which they time by trials in training.
COMMON = dict(probe_steps=10, seed=0, heartbeat_interval=HEARTBEAT, fidelity=False)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread, as every worker process uses: on a busy 2-core machine OpenMP
    threads that spin for each other make a tiny model's trial many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- storages --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_server():
    reason = _postgres.skip_reason()
    if reason:
        pytest.skip(reason)
    if not any(_importable(m) for m in ("psycopg2", "psycopg")):
        pytest.skip("no PostgreSQL driver: pip install 'autoclip-tuner[postgres]'")
    with _postgres.postgres_server() as server:
        yield server


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.fixture
def storage(request, tmp_path) -> str:
    """A fresh storage: a journal file, or an empty database on the test server."""
    if request.param == "journal":
        return str(tmp_path / "study.journal")
    server = request.getfixturevalue("pg_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


BOTH = pytest.mark.parametrize(
    "storage",
    [pytest.param("journal"), pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


@functools.cache
def _store(storage: str) -> optuna.storages.BaseStorage:
    """One storage object per URL or path for the tests' own reads, so that polling is quick
    (a journal is then read incrementally, a database through one connection pool)."""
    return open_storage(storage)


def _study(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=_store(storage))


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    names = [s.study_name for s in optuna.get_all_study_summaries(_store(storage))]
    return _study(storage, name).get_trials(deepcopy=False) if name in names else []


# -- processes -------------------------------------------------------------------------------
_TUNE = (
    "import json, sys, warnings, optuna\n"
    "warnings.simplefilter('ignore')\n"
    "warnings.filterwarnings('always', message='worker process')\n"  # a dead worker: shown
    "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
    "from autoclip.search import tune\n"
    "tune(**json.loads(sys.argv[1]))\n"
)


_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _sigint_default() -> None:
    """Ctrl-C reaches the child as in a terminal, even where the test runner was started in
    the background (a shell without job control starts those with SIGINT ignored, and an
    ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn_tune(log: Path, **kwargs) -> subprocess.Popen:
    """``tune(**kwargs)`` in a separate Python process (its output goes to ``log``)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _TUNE, json.dumps(kwargs)],
            stdout=out,
            stderr=out,
            env=_ENV,
            preexec_fn=_sigint_default,
        )


def _spawn_cli(log: Path, *args: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "autoclip", *args],
            stdout=out,
            stderr=out,
            cwd=log.parent,
            env=_ENV,
            preexec_fn=_sigint_default,
        )


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"worker did not finish in {timeout} s:\n{log.read_text()}") from None


def _wait_for(what: str, cond: Callable[[], object], timeout: float = 60.0, proc=None, log=None):
    """Poll ``cond`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"worker exited ({proc.returncode}) before {what}:\n"
                + (log.read_text() if log else "")
            )
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _running_in(storage: str, name: str, pid: int):
    """The trial that process ``pid`` is training right now, once one has started."""
    for t in _trials(storage, name):
        if t.state == TrialState.RUNNING and _pid(t) == pid:
            if t.params:  # its clipper is sampled: training has begun
                return t
    return None


def _pid(t: optuna.trial.FrozenTrial) -> int | None:
    return (t.user_attrs.get(ATTR + "worker") or {}).get("pid")


def _rec(t: optuna.trial.FrozenTrial) -> dict:
    """What the trial found, written once at its end."""
    return t.user_attrs.get(ATTR + "trial") or {}


def _n_complete(storage: str, name: str) -> int:
    return sum(t.state == TrialState.COMPLETE for t in _trials(storage, name))


def _retry_of(t: optuna.trial.FrozenTrial) -> int | None:
    own = t.user_attrs.get(ATTR + "retry_of")
    return own if own is not None else t.system_attrs.get("failed_trial")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=1e-12) if isinstance(a[k], float) else a[k] == b[k]
        for k in a
    )


def _created(storage: str, name: str) -> bool:
    """Whether the study exists (without creating an empty journal file to find out)."""
    store = _store(storage) if "://" in storage or os.path.exists(storage) else None
    return store is not None and name in [
        s.study_name for s in optuna.get_all_study_summaries(store)
    ]


def _enqueued(storage: str, name: str) -> list[dict]:
    """The first trials' parameters (the ladder), as the coordinator enqueued them."""
    attrs = _study(storage, name).user_attrs
    proposal = _proposal_of(_store(storage), name)
    strategies = attrs[ATTR + "settings"]["strategies"]
    return first_trials(proposal, strategies, attrs[ATTR + "enqueued"])


# -- many workers, one study -----------------------------------------------------------------
@BOTH
def test_workers_on_one_study_complete_exactly_n_trials_without_duplicates(storage, tmp_path):
    """Three workers in two `tune` runs racing to create one study: one coordinator, the
    candidates enqueued once, exactly N finished trials, no parameters sampled twice."""
    n, name = 10, "shared"
    log = tmp_path / "other.log"
    # Another "machine": tune with two local workers, started first so that it creates the
    # study; this process joins while the coordinator may still be probing.
    other = _spawn_tune(
        log,
        task=FAST,
        n_trials=n,
        steps=100,
        storage=storage,
        study_name=name,
        workers=2,
        baselines=False,
        **COMMON,
    )
    _wait_for(
        "the study to be created",
        lambda: _created(storage, name),
        proc=other,
        log=log,
    )
    result = tune(
        FAST, n_trials=n, steps=100, storage=storage, study_name=name, baselines=False, **COMMON
    )
    assert _finish(other, log) == 0, log.read_text()

    trials = _trials(storage, name)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n
    # Anything else is a trial started beyond the budget by a race, stopped at once.
    assert all(_rec(t).get("surplus") for t in trials if t.state != TrialState.COMPLETE)
    assert sum(r.state == "COMPLETE" for r in result.trials) == n
    assert len({_pid(t) for t in complete}) >= 2, "only one worker ran"

    # The coordinator enqueued the first trials exactly once (the ladder: the whole budget).
    enqueued = _enqueued(storage, name)
    assert 1 <= len(enqueued) <= n
    from_queue = [t for t in trials if "fixed_params" in t.system_attrs]
    assert len(from_queue) == len(enqueued)
    for params in enqueued:
        assert sum(_same(t.params, params) for t in trials) == 1, params
    # Workers sample with seeds of their own: no parameters were tried twice.
    keys = [json.dumps(t.params, sort_keys=True) for t in complete]
    assert len(set(keys)) == len(keys)


# -- a worker killed mid-trial ---------------------------------------------------------------
@BOTH
def test_a_killed_worker_s_trial_is_failed_retried_and_the_study_completes(
    storage, tmp_path, monkeypatch
):
    n, name = 2, "killed"
    log = tmp_path / "victim.log"
    victim = _spawn_tune(
        log,
        task=SLOW,
        n_trials=n,
        steps=SLOW_STEPS,
        storage=storage,
        study_name=name,
        baselines=False,
        **COMMON,
    )
    # Let it finish one trial, then kill it in the middle of the next.
    _wait_for("a completed trial", lambda: _n_complete(storage, name) >= 1, 120, victim, log)
    killed = _wait_for(
        "a trial in training", lambda: _running_in(storage, name, victim.pid), 60, victim, log
    )
    done_before = {
        t.number: t.values for t in _trials(storage, name) if t.state == TrialState.COMPLETE
    }
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert _study(storage, name).trials[killed.number].state == TrialState.RUNNING  # mid-trial

    if "://" in storage:
        # Pretend the victim ran on another machine: the process-id check cannot see it,
        # so only the heartbeat (silent for 3 s) can fail and retry its trial.
        monkeypatch.setattr(socket, "gethostname", lambda: "another-machine")
    result = tune(
        SLOW,
        n_trials=n,
        steps=SLOW_STEPS,
        storage=storage,
        study_name=name,
        baselines=False,
        **COMMON,
    )

    trials = {t.number: t for t in _trials(storage, name)}
    assert trials[killed.number].state == TrialState.FAIL
    retries = [t for t in trials.values() if _retry_of(t) == killed.number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE
    # The same parameters, as stored (the test may have seen the trial between two suggest
    # calls: a retry of a trial killed there fixes what it had and samples the rest).
    assert trials[killed.number].params.items() <= retry.params.items()
    if "://" in storage:  # Optuna's heartbeat callback retried it, recording the lineage
        stale_cb = getattr(
            optuna.storages,
            "RetryHeartbeatStaleTrialCallback",  # Optuna >= 4.9
            optuna.storages.RetryFailedTrialCallback,
        )
        assert stale_cb.retried_trial_number(retry) == killed.number
        assert _pid(retry) == os.getpid()  # not the dead worker's
    else:  # the same-host process-id check did
        assert retry.user_attrs[ATTR + "retry_of"] == killed.number

    # No completed trial lost, N trials completed, the lineage is in the result.
    for number, values in done_before.items():
        assert trials[number].state == TrialState.COMPLETE and trials[number].values == values
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == n
    records = {r.number: r for r in result.trials}
    assert records[retry.number].retry_of == killed.number
    assert records[killed.number].state == "FAIL"
    assert load_result(storage, name).chosen.state == "COMPLETE"
    # ...and in what `autoclip report` prints for the study.
    from click.testing import CliRunner

    from autoclip.cli import main

    out = CliRunner().invoke(
        main, ["report", "--storage", storage, "--study", name, "--out", str(tmp_path / "r")]
    )
    assert out.exit_code == 0, out.output
    assert f"trial {retry.number} retries trial {killed.number}" in out.output


# -- an interrupted run resumes --------------------------------------------------------------
@BOTH
def test_an_interrupted_tune_resumes_when_rerun(storage, tmp_path):
    """Ctrl-C during the second trial, then the same command again: the study goes on from
    where it stopped (no second probe, the proposal reused), and ends with N trials, not 2N.
    On the journal file through ``autoclip tune``, on PostgreSQL through the library."""
    n, name = 2, "resumed"
    # Four times the usual trial length: the SIGINT must land while the second trial trains,
    # and on an idle machine a SLOW_STEPS trial can end between the test seeing it and the kill.
    steps = 4 * SLOW_STEPS
    cli = "://" not in storage
    args = [
        "tune",
        SLOW,
        "--trials",
        str(n),
        "--steps",
        str(steps),
        "--storage",
        storage,
        "--study",
        name,
        "--probe-steps",
        "10",
        "--full-length",
        "-q",
        "--out",
        str(tmp_path / "out"),
    ]
    kwargs = dict(
        task=SLOW,
        n_trials=n,
        steps=steps,
        storage=storage,
        study_name=name,
        baselines=False,
        **COMMON,
    )

    def run(log: Path) -> subprocess.Popen:
        return _spawn_cli(log, *args) if cli else _spawn_tune(log, **kwargs)

    log = tmp_path / "first.log"
    first = run(log)
    _wait_for("a completed trial", lambda: _n_complete(storage, name) >= 1, 120, first, log)
    # What the study holds before the interrupt is read now, so the kill follows the sight of
    # a training trial at once.
    before = _study(storage, name).user_attrs
    proposal_before = _proposal_of(_store(storage), name)
    interrupted = _wait_for(
        "a trial in training", lambda: _running_in(storage, name, first.pid), 60, first, log
    )
    os.kill(first.pid, signal.SIGINT)
    assert _finish(first, log) != 0
    done_before = {  # completed trials never change, so reading them after the kill is exact
        t.number: t.values for t in _trials(storage, name) if t.state == TrialState.COMPLETE
    }

    trials = {t.number: t for t in _trials(storage, name)}
    assert trials[interrupted.number].state == TrialState.FAIL
    assert "interrupted" in _rec(trials[interrupted.number])["reason"]

    log2 = tmp_path / "second.log"
    assert _finish(run(log2), log2, 180) == 0, log2.read_text()

    after = _study(storage, name).user_attrs
    assert _proposal_of(_store(storage), name) == proposal_before  # not probed again
    assert after[ATTR + "coordinator"] == before[ATTR + "coordinator"]  # nor re-created
    trials = {t.number: t for t in _trials(storage, name)}
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == n
    for number, values in done_before.items():
        assert trials[number].values == values
    (retry,) = [t for t in trials.values() if _retry_of(t) == interrupted.number]
    # The parameters as stored: the test may have first seen the trial between two suggest
    # calls (the strategy written, its threshold not yet).
    assert retry.state == TrialState.COMPLETE
    assert trials[interrupted.number].params.items() <= retry.params.items()
    assert retry.number > interrupted.number  # the numbering went on
    if cli:
        result = json.loads((tmp_path / "out" / "result.json").read_text())
        assert sum(t["state"] == "COMPLETE" for t in result["trials"]) == n


def test_ctrl_c_while_the_workers_start_prints_one_line_and_leaves_no_process(tmp_path):
    """`--workers 2` starts its worker before the probe; a Ctrl-C to the whole process group
    (as a terminal sends it) while the coordinator probes: exit 130 with the one line, no
    traceback from the worker (it starts with SIGINT ignored), and no process left behind."""
    path, name = str(tmp_path / "study.journal"), "ctrl-c"
    log = tmp_path / "ctrl-c.log"
    args = ["tune", SLOW, "--trials", "4", "--steps", str(4 * SLOW_STEPS), "--workers", "2"]
    args += ["--storage", path, "--study", name, "--probe-steps", "100", "-q"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoclip", *args, "--out", str(tmp_path / "out")],
            stdout=out,
            stderr=out,
            cwd=tmp_path,
            env=_ENV,
            preexec_fn=_sigint_default,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    _wait_for("the study to be created", lambda: _created(path, name), 120, proc, log)
    assert not _study(path, name).user_attrs.get(ATTR + "ready")  # still probing
    os.killpg(proc.pid, signal.SIGINT)
    assert _finish(proc, log) == 130, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], text

    def group_gone() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    _wait_for("the worker process to end", group_gone, 30)


def test_a_rerun_takes_over_a_study_whose_coordinator_died_while_probing(tmp_path):
    path = str(tmp_path / "study.journal")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    study = optuna.create_study(
        storage=open_storage(path), study_name="orphan", directions=["minimize"] * 3
    )
    study.set_user_attr(
        ATTR + "coordinator", {"host": socket.gethostname(), "pid": int(gone.stdout)}
    )
    result = tune(FAST, n_trials=2, storage=path, study_name="orphan", baselines=False, **COMMON)
    assert sum(r.state == "COMPLETE" for r in result.trials) == 2
    attrs = _study(path, "orphan").user_attrs
    assert attrs[ATTR + "coordinator"]["pid"] == os.getpid()


# -- clear errors ----------------------------------------------------------------------------
def test_an_unreachable_server_is_one_clear_error():
    if not any(_importable(m) for m in ("psycopg2", "psycopg")):
        pytest.skip("no PostgreSQL driver: pip install 'autoclip-tuner[postgres]'")
    port = _postgres.free_port()  # nothing listens there
    url = f"postgresql://me:secret@127.0.0.1:{port}/autoclip"
    with pytest.raises(autoclip.StorageError) as info:
        tune(FAST, n_trials=1, storage=url, study_name="nowhere", baselines=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message and "check the host, port" in message
    assert "secret" not in message


@pytest.mark.postgres
def test_bad_credentials_are_one_clear_error(pg_server):
    pg_server.execute("CREATE ROLE alice LOGIN PASSWORD 'right'")
    pg_server.execute("CREATE DATABASE alices OWNER alice")
    url = pg_server.url("alices", user="alice", password="wrong")
    with pytest.raises(autoclip.StorageError, match="password authentication failed") as info:
        open_storage(url)
    assert "\n" not in str(info.value) and "wrong" not in str(info.value)
    # ...and the right password works.
    open_storage(pg_server.url("alices", user="alice", password="right"))


@BOTH
def test_a_study_created_with_other_settings_is_refused(storage):
    tune(FAST, n_trials=1, steps=5, storage=storage, study_name="s", baselines=False, **COMMON)
    with pytest.raises(autoclip.StorageError, match="different search.*mode"):
        tune(
            FAST,
            n_trials=1,
            steps=5,
            storage=storage,
            study_name="s",
            mode="single",
            baselines=False,
            **COMMON,
        )
    with pytest.raises(autoclip.StorageError, match="different search.*steps"):
        tune(FAST, n_trials=1, steps=6, storage=storage, study_name="s", baselines=False, **COMMON)


def test_a_study_not_made_by_autoclip_is_refused(tmp_path):
    path = str(tmp_path / "study.journal")
    optuna.create_study(storage=open_storage(path), study_name="theirs")
    with pytest.raises(autoclip.StorageError, match="not created by autoclip"):
        tune(FAST, n_trials=1, storage=path, study_name="theirs", baselines=False)


# -- a local worker dies -----------------------------------------------------------------------
@BOTH
def test_a_local_worker_killed_mid_trial_is_reaped_and_tune_finishes(storage, tmp_path):
    """`tune(workers=2)`; its spawned worker is SIGKILLed mid-trial. The coordinator reaps it
    (a zombie passes ``os.kill(pid, 0)``: only its process handle knows it is dead), fails and
    retries its trial, and finishes with exactly N trials, in bounded time."""
    # Trials of a few seconds, and enough of them that the coordinator cannot finish the
    # study alone while its worker process is still starting.
    n, name = 6, "reaped"
    log = tmp_path / "coordinator.log"
    coordinator = _spawn_tune(
        log,
        task=SLOW,
        n_trials=n,
        steps=3 * SLOW_STEPS,
        storage=storage,
        study_name=name,
        workers=2,
        baselines=False,
        **COMMON,
    )

    def worker_trial():
        for t in _trials(storage, name):
            if t.state == TrialState.RUNNING and _pid(t) not in (None, coordinator.pid):
                if t.params:  # its clipper is sampled: training has begun
                    return t
        return None

    killed = _wait_for("the worker's trial in training", worker_trial, 120, coordinator, log)
    worker_pid = _pid(killed)
    os.kill(worker_pid, signal.SIGKILL)
    assert _finish(coordinator, log, 180) == 0, log.read_text()

    trials = {t.number: t for t in _trials(storage, name)}
    assert trials[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in trials.values() if _retry_of(t) == killed.number]
    assert retry.state == TrialState.COMPLETE
    # The same parameters, as stored (the test may have seen the trial between two suggest
    # calls: a retry of a trial killed there fixes what it had and samples the rest).
    assert trials[killed.number].params.items() <= retry.params.items()
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == n
    assert f"worker process (pid {worker_pid}) died" in log.read_text()


# -- one Python process, retried ---------------------------------------------------------------
def test_retrying_tune_in_the_same_process_after_a_failed_probe_does_not_wait(tmp_path):
    """In a notebook: the probe fails (a bug in the loss), the user fixes it and calls `tune`
    again in the same process; the half-made study is not waited for as "its coordinator's"."""
    import dataclasses

    from _tasks import make_task

    def broken(model, batch):
        raise RuntimeError("bug in my loss")

    path, good = str(tmp_path / "study.journal"), make_task(steps=5)
    bad = dataclasses.replace(good, loss_fn=broken)
    for _ in range(2):  # twice: a second failure is the same error, at once
        start = time.monotonic()
        with pytest.raises(Exception, match="bug in my loss"):
            tune(bad, n_trials=2, storage=path, baselines=False, **COMMON)
        assert time.monotonic() - start < 30
    start = time.monotonic()
    result = tune(good, n_trials=2, storage=path, baselines=False, **COMMON)
    assert time.monotonic() - start < 120
    assert sum(r.state == "COMPLETE" for r in result.trials) == 2


# -- secrets in URLs ---------------------------------------------------------------------------
@pytest.mark.postgres
def test_a_password_in_any_form_of_url_is_never_printed_or_stored(pg_server, tmp_path):
    """``user:password@`` with an unencoded ``@`` in the password, ``?password=``, and a wrong
    ``?password=``: the right ones connect, and no output, result file or study attribute
    carries any part of the password; the wrong one is one line without it."""
    secret = "se@cr3t"
    pg_server.execute(f"CREATE ROLE bob LOGIN PASSWORD '{secret}'")
    pg_server.execute("CREATE DATABASE bobs OWNER bob")
    where = f"{pg_server.host}:{pg_server.port}/bobs"
    forms = {
        "userinfo": f"postgresql://bob:{secret}@{where}",  # the "@" left unencoded
        "query": f"postgresql://bob@{where}?password=se%40cr3t",
    }

    def leaks(text: str) -> list[str]:
        return [p for p in ("se@cr3t", "se%40cr3t", "cr3t") if p in text]

    for i, (form, url) in enumerate(forms.items()):
        out = tmp_path / form
        args = ["tune", FAST, "--trials", "1", "--steps", "5", "--probe-steps", "10"]
        args += ["--full-length", "--storage", url, "--study", f"s{i}", "--out", str(out)]
        proc = subprocess.run(
            [sys.executable, "-m", "autoclip", *args, "--json"],
            capture_output=True,
            text=True,
            timeout=180,
            env=_ENV,
        )
        assert proc.returncode == 0, (form, proc.stderr)
        assert not leaks(proc.stdout + proc.stderr), form
        assert json.loads(proc.stdout)["storage"].startswith("postgresql://bob")
        assert not leaks((out / "result.json").read_text()), form
        study = _study(url, f"s{i}")
        store = _store(url)
        system = store.get_study_system_attrs(store.get_study_id_from_name(f"s{i}"))
        stored = json.dumps([study.user_attrs, system], default=str)
        stored += json.dumps([[t.user_attrs, t.system_attrs] for t in study.trials], default=str)
        assert not leaks(stored), form

    wrong = f"postgresql://bob@{where}?password=wr0ng-0ne"
    proc = subprocess.run(
        [sys.executable, "-m", "autoclip", "report", "--storage", wrong, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_ENV,
    )
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")]
    assert "password authentication failed" in line and "wr0ng" not in proc.stderr
