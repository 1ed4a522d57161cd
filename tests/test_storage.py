"""Stored studies under faults: torn journals, full disks, files that are not journals,
edited tasks, secrets in URLs. Real files (a real tmpfs where root can mount one), real
processes where a process matters; every wait bounded by a timeout.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

import autoclip
from autoclip.search import _journal as journal
from autoclip.search import load_result, tune
from autoclip.search._fingerprint import describe_changes, fingerprint
from autoclip.search._redact import normalize_url, redact_text, redact_url

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning", "ignore::FutureWarning"
)

HERE = Path(__file__).resolve().parent
TASKS = HERE / "_tasks.py"
FAST = f"{TASKS}:make_task"
COMMON = dict(probe_steps=10, seed=0, heartbeat_interval=1, fidelity=False)
_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _complete(path: str, name: str) -> dict[int, tuple]:
    """{trial number: values} of the completed trials, read back with plain Optuna."""
    store = optuna.storages.JournalStorage(JournalFileBackend(path))
    study = optuna.load_study(study_name=name, storage=store)
    return {t.number: tuple(t.values) for t in study.trials if t.state == TrialState.COMPLETE}


def _optuna_reads_every_line(path: str) -> None:
    """Every line of the file is a whole journal record (nothing glued, nothing torn)."""
    data = Path(path).read_bytes()
    assert data.endswith(b"\n")
    for line in data.splitlines():
        assert isinstance(json.loads(line)["op_code"], int)


def _cli(*args: str, timeout: float = 300, env=_ENV) -> subprocess.CompletedProcess:
    """``autoclip ARGS`` in a real process, bounded by ``timeout``."""
    return subprocess.run(
        [sys.executable, "-m", "autoclip", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line of a failed command's error (and check it is one line)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


# -- a torn last record ----------------------------------------------------------------------
def test_a_torn_last_record_is_cut_off_and_kept_and_never_appended_onto(tmp_path):
    path, name = str(tmp_path / "study.journal"), "torn"
    tune(FAST, n_trials=2, steps=5, storage=path, study_name=name, baselines=False, **COMMON)
    done = _complete(path, name)
    assert len(done) == 2
    # A writer dies mid-record: the last line loses its end (and its newline).
    whole = Path(path).read_bytes()
    fragment = b'{"op_code":8,"worker_id":"dead-writer","trial_id":1,"us'
    Path(path).write_bytes(whole + fragment)

    with pytest.warns(RuntimeWarning, match="torn record"):
        result = load_result(path, name)
    assert sum(r.state == "COMPLETE" for r in result.trials) == 2
    assert Path(path).read_bytes() == whole  # cut back to the last whole record
    assert fragment in Path(path + ".torn").read_bytes()  # and the fragment kept

    # `autoclip report` says so in one line, and still shows both trials.
    Path(path).write_bytes(whole + fragment)
    shown = {k: v for k, v in _ENV.items() if k != "PYTHONWARNINGS"}  # as a user sees it
    proc = _cli(
        "report", "--storage", path, "--study", name, "--out", str(tmp_path / "r"), env=shown
    )
    assert proc.returncode == 0, proc.stderr
    (warning,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert warning.startswith("Warning: journal") and "torn record" in warning

    # Resuming appends after the last whole record, never onto the fragment.
    Path(path).write_bytes(whole + fragment)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tune(FAST, n_trials=3, steps=5, storage=path, study_name=name, baselines=False, **COMMON)
    _optuna_reads_every_line(path)
    after = _complete(path, name)
    assert len(after) == 3
    assert all(after[k] == v for k, v in done.items())  # nothing completed lost


def test_a_record_an_older_version_glued_onto_a_torn_one_is_read_back(tmp_path):
    path, name = str(tmp_path / "study.journal"), "glued"
    tune(FAST, n_trials=2, steps=5, storage=path, study_name=name, baselines=False, **COMMON)
    lines = Path(path).read_bytes().splitlines(keepends=True)
    # A record torn, the next one appended onto it (the old failure), more records after.
    glued = lines[:-3] + [lines[-3][:20] + lines[-2], lines[-1]]
    Path(path).write_bytes(b"".join(glued))
    with pytest.raises(ValueError):  # plain Optuna cannot read it any more
        optuna.storages.JournalStorage(JournalFileBackend(path))
    with pytest.warns(RuntimeWarning, match="glued"):
        result = load_result(path, name)
    assert sum(r.state == "COMPLETE" for r in result.trials) == 2


def test_a_damaged_record_mid_file_is_one_clear_error(tmp_path):
    path = tmp_path / "study.journal"
    tune(FAST, n_trials=1, steps=5, storage=str(path), study_name="s", baselines=False, **COMMON)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b"garbage that is not json\n"
    path.write_bytes(b"".join(lines))
    with pytest.raises(autoclip.StorageError, match="damaged record") as info:
        load_result(str(path), "s")
    assert "\n" not in str(info.value)


# -- a full disk -----------------------------------------------------------------------------
@pytest.mark.parametrize("fidelity", [False, True], ids=["full-length", "brackets"])
def test_a_write_that_fails_for_a_full_disk_is_undone_and_reported(tmp_path, monkeypatch, fidelity):
    """Simulated: the write gets half a record out, then ENOSPC (what a full disk does)."""
    path, name = str(tmp_path / "study.journal"), "full"
    kw = dict(steps=30, storage=path, study_name=name, baselines=False)
    kw |= {**COMMON, "fidelity": fidelity}
    tune(FAST, n_trials=1, **kw)
    before = Path(path).read_bytes()
    real = journal._write_all

    def half_then_full(fd, data):
        real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal, "_write_all", half_then_full)
    with pytest.raises(autoclip.StorageError, match="disk is full") as info:
        tune(FAST, n_trials=3, **kw)
    assert "\n" not in str(info.value) and "AssertionError" not in str(info.value)
    assert Path(path).read_bytes() == before  # the half record was undone
    monkeypatch.setattr(journal, "_write_all", real)
    tune(FAST, n_trials=3, **kw)
    store = optuna.storages.JournalStorage(JournalFileBackend(path))
    trials = optuna.load_study(study_name=name, storage=store).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3  # brackets stop some trials at a rung: pruned, not failed


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB tmpfs (root only; skipped where it cannot be mounted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (the simulated ENOSPC test covers the rest)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_stops_tune_with_one_line_and_a_rerun_resumes(tiny_disk, tmp_path):
    path, name = str(tiny_disk / "study.journal"), "disk"
    # Fill the disk but for ~24 KiB: the study starts, then runs out of space mid-search.
    filler = tiny_disk / "filler"
    free = shutil.disk_usage(tiny_disk).free
    filler.write_bytes(b"\0" * (free - 24 * 1024))
    args = ["tune", FAST, "--trials", "40", "--steps", "5", "--probe-steps", "10", "--full-length"]
    args += ["--storage", path, "--study", name, "--out", str(tmp_path / "out"), "-q"]
    first = _cli(*args)
    assert first.returncode == 1, first.stdout + first.stderr
    line = _error_line(first)
    assert "disk is full" in line and "AssertionError" not in line
    _optuna_reads_every_line(path)  # nothing torn left behind
    done = _complete(path, name)
    assert 0 < len(done) < 40

    filler.unlink()  # free space, rerun the same command (fewer trials: the disk is small)
    args[3] = str(len(done) + 2)
    second = _cli(*args)
    assert second.returncode == 0, second.stderr
    after = _complete(path, name)
    assert len(after) == len(done) + 2
    assert all(after[k] == v for k, v in done.items())


# -- files that are not journals -------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [b"my notes\n", b'{"a": 1}\n', b"SQLite format 3\x00" + b"\0" * 100],
    ids=["text", "json", "sqlite"],
)
def test_a_file_that_is_not_a_journal_is_refused_untouched(tmp_path, content):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(autoclip.StorageError, match="not .*journal") as info:
        tune(FAST, n_trials=1, storage=str(path), baselines=False, **COMMON)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == content
    assert not Path(str(path) + ".flock").exists()


def test_a_fifo_a_device_and_a_folder_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for where, kind in ((fifo, "FIFO"), ("/dev/null", "device"), (tmp_path, "folder")):
        proc = _cli("tune", FAST, "--storage", str(where), "--out", str(tmp_path / "o"), timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert kind in _error_line(proc)


# -- fingerprints ----------------------------------------------------------------------------
def _edited_task(tmp_path: Path, old: str, new: str) -> Path:
    text = TASKS.read_text()
    assert old in text
    path = tmp_path / "task.py"
    path.write_text(text.replace(old, new))
    return path


def test_an_edited_task_file_is_refused_naming_what_changed_and_the_ways_out(tmp_path):
    task = tmp_path / "task.py"
    shutil.copy(TASKS, task)
    args = ["tune", f"{task}:make_task", "--trials", "2", "--steps", "5", "--probe-steps", "10"]
    args += ["--full-length"]
    args += ["--storage", str(tmp_path / "s.journal"), "--out", str(tmp_path / "out"), "-q"]
    assert _cli(*args).returncode == 0
    _edited_task(tmp_path, "lr: float = 0.05", "lr: float = 0.01")  # the user edits lr

    again = _cli(*args)
    assert again.returncode == 1
    line = _error_line(again)
    assert "lr=0.05 -> lr=0.01" in line, line
    assert "--study" in line and "--resume-anyway" in line
    # The old study's result was not printed as the new task's.
    assert again.stdout.strip() == ""

    forced = _cli(*args, "--resume-anyway", "--trials", "3")
    assert forced.returncode == 0, forced.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert sum(t["state"] == "COMPLETE" for t in result["trials"]) == 3


def test_another_model_under_the_same_task_name_is_refused(tmp_path):
    path = str(tmp_path / "s.journal")
    tune(FAST, n_trials=1, steps=5, storage=path, study_name="s", baselines=False, **COMMON)
    other = _edited_task(
        tmp_path,
        "nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)",
        "nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)",
    )
    with pytest.raises(autoclip.StorageError, match="different task.*model") as info:
        tune(
            f"{other}:make_task",
            n_trials=2,
            steps=5,
            storage=path,
            study_name="s",
            baselines=False,
            **COMMON,
        )
    assert "\n" not in str(info.value)
    assert len(_complete(path, "s")) == 1  # nothing mixed in


def test_the_fingerprint_is_stable_and_leaves_random_state_alone():
    import random

    import torch

    sys.path.insert(0, str(HERE))
    import _tasks

    torch.manual_seed(123)
    random.seed(5)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(123)
    random.seed(5)
    a = fingerprint(_tasks.make_task())
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert fingerprint(_tasks.make_task()) == a
    assert describe_changes(a, fingerprint(_tasks.make_task(seed=1)))[-1] == "seed: 0 -> 1"
    assert describe_changes(a, a) == []


# -- secrets in URLs -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://me:s3cret@db:5432/x", "postgresql://me:***@db:5432/x"),
        ("postgresql://me@db/x?password=s3cret", "postgresql://me@db/x?password=***"),
        ("postgresql://me:s3c@ret@db/x", "postgresql://me:***@db/x"),
        ("postgresql://me:s3c%40ret@db/x", "postgresql://me:***@db/x"),
        (
            "postgresql://me:a/s3cret@db/x?sslmode=require&password=s3cret",
            "postgresql://me:***@db/x?sslmode=require&password=***",
        ),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
    ],
)
def test_urls_are_shown_without_their_secrets(url, shown):
    assert redact_url(url) == shown
    assert "s3c" not in redact_url(url) and "ret" not in redact_url(url).replace("postgresql", "")


def test_driver_messages_lose_the_secret_too():
    url = "postgresql://me:p@ss@db/x?password=other"
    msg = 'could not connect "postgresql://me:p@ss@db/x?password=other" password=other p@ss'
    out = redact_text(msg, url)
    assert "p@ss" not in out and "other" not in out and "ss@db" not in out
    assert normalize_url(url).startswith("postgresql://me:p%40ss@db/x")


# -- arguments checked before the probe ------------------------------------------------------
@pytest.mark.parametrize(
    "extra, what",
    [
        (["--seed", "-1"], "--seed"),
        (["--out", "{file}/sub"], "--out"),
        (["--weights", "nan,1,1"], "--weights"),
        (["--storage", "{file}/study.journal"], "folder"),
    ],
    ids=["seed", "out", "weights", "storage"],
)
def test_bad_arguments_fail_before_the_probe_with_one_line(tmp_path, extra, what):
    file = tmp_path / "a-file"
    file.write_text("x")
    journal_path = tmp_path / "s.journal"
    args = ["tune", FAST, "--storage", str(journal_path), "--out", str(tmp_path / "out")]
    args += [a.format(file=file) for a in extra]
    proc = _cli(*args, timeout=60)
    assert proc.returncode in (1, 2), proc.stderr
    assert what in _error_line(proc)
    assert not journal_path.exists()  # nothing created: refused before the study and probe


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seed=-1), "seed"),
        (dict(strategies=["norm", "nope"]), "strategies"),
        (dict(weights=(1.0, float("nan"), 1.0)), "weights"),
        (dict(lr_range=0.5), "lr_range"),
        (dict(max_instability=-1.0), "max_instability"),
        (dict(probe_steps=0), "probe_steps"),
    ],
)
def test_bad_tune_arguments_are_refused_before_anything_is_stored(tmp_path, kwargs, match):
    path = tmp_path / "s.journal"
    args = {**COMMON, **kwargs}
    with pytest.raises(autoclip.ConfigError, match=match) as info:
        tune(FAST, n_trials=1, storage=str(path), baselines=False, **args)
    assert "\n" not in str(info.value)
    assert not path.exists()


# -- every trial diverged --------------------------------------------------------------------
def test_a_study_whose_every_trial_diverged_says_so_and_chooses_nothing(tmp_path):
    task = tmp_path / "nan_task.py"
    task.write_text(
        "import dataclasses, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from _tasks import make_task as base\n"
        "def make_task():\n"
        "    return dataclasses.replace(base(), eval_fn=lambda model: float('nan'))\n"
    )
    out = tmp_path / "out"
    proc = _cli(
        "tune",
        f"{task}:make_task",
        "--trials",
        "3",
        "--steps",
        "5",
        "--probe-steps",
        "10",
        "--storage",
        str(tmp_path / "s.journal"),
        "--out",
        str(out),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "diverged" in (proc.stdout + proc.stderr)
    assert "chosen: nothing" in proc.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["chosen"] is None and "diverged" in result["warning"]
    assert all(t["diverged"] for t in result["trials"] if t["state"] == "COMPLETE")


def test_a_journal_lock_held_forever_is_a_clear_error_not_a_hang(tmp_path, monkeypatch):
    """Another process holds the journal's lock and never lets go (stopped with Ctrl-Z, say):
    opening the journal gives up after the lock's deadline, with one line naming the lock."""
    import time

    path = tmp_path / "s.journal"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'a')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
            str(path) + ".flock",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(journal, "LOCK_TIMEOUT", 1.0)
        start = time.monotonic()
        with pytest.raises(autoclip.StorageError, match="journal lock") as info:
            tune(FAST, n_trials=1, storage=str(path), baselines=False, **COMMON)
        assert time.monotonic() - start < 30
        assert "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()
