"""The journal file a study lives in on one machine: Optuna's format, checked and repaired.

Optuna's journal is one JSON record a line, appended under a lock. Three things can go wrong
with a plain append, and each is handled here instead of corrupting the study:

* **A torn last record** (a writer killed mid-write, a full disk, ``truncate``): a line
  without its newline. Appending onto it would glue the next record to it and make every
  later read fail. Before each append (under the lock, so no live writer is mid-write) a
  torn tail is cut off and kept beside the journal in ``<path>.torn``; a reader skips it.
  A record an older version glued onto a torn one is read back from where it starts.
* **A full disk**: the append is undone (the file is cut back to its length before it) and
  reported as a :class:`~autoclip.errors.StorageError` naming the disk, not as a later
  failure to find what was written.
* **Something that is not a journal** (a text file, an SQLite database, a FIFO, a device, a
  folder): refused when opened, before anything is written to it.

The lock is :class:`FileLock` on ``<path>.flock`` (flock(2) through ``filelock``). Journal
files are for one machine (local disks), where flock is reliable.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import warnings
from collections.abc import Iterator
from typing import Any

import filelock
from optuna.storages.journal import BaseJournalBackend

from autoclip.errors import StorageError

__all__ = ["FileLock", "JournalFile", "check_journal_path"]

# Optuna writes each record as json.dumps({"op_code": ..., "worker_id": ..., ...},
# separators=(",", ":")), so every record starts with these bytes.
_RECORD_START = b'{"op_code":'
_HEAD = 4096  # bytes read to recognise a journal
LOCK_TIMEOUT = 120.0  # seconds: a write holds the lock for milliseconds


class FileLock:
    """The journal's write lock: ``filelock.FileLock`` on ``<path>.flock``, with a deadline.

    On POSIX that is flock(2), which the kernel drops when its holder dies, so a worker
    killed while writing does not hold up the others; each thread takes it through a
    descriptor of its own, so it excludes the threads of one process too. The deadline means
    a stopped holder (Ctrl-Z) is reported instead of waited for forever.
    """

    def __init__(self, path: str) -> None:
        self.path = path + ".flock"
        self._lock = filelock.FileLock(self.path, timeout=LOCK_TIMEOUT)

    def acquire(self) -> bool:
        try:
            self._lock.acquire(poll_interval=0.002)  # writes take milliseconds: poll as often
        except filelock.Timeout:
            raise StorageError(
                f"waited {LOCK_TIMEOUT:.0f} s for the journal lock {self.path!r}, which another "
                "process holds; if a worker is stopped (Ctrl-Z), resume or end it, then rerun"
            ) from None
        return True

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def _is_record(line: bytes) -> bool:
    try:
        rec = json.loads(line)
    except ValueError:
        return False
    return isinstance(rec, dict) and isinstance(rec.get("op_code"), int) and "worker_id" in rec


def check_journal_path(path: str) -> None:
    """Refuse ``path`` unless it is absent, empty, or an Optuna journal; writes nothing.

    Raises:
        StorageError: for a folder, FIFO, device or socket, a file that cannot be read and
            written, or a file whose first record is not a journal record.
    """
    shown = repr(path)
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise StorageError(f"cannot create storage file {shown}: its folder does not exist")
    try:
        st = os.stat(path)  # follows a symlink to what it points at
    except FileNotFoundError:
        if os.path.islink(path):
            raise StorageError(f"storage {shown} is a broken symbolic link") from None
        return
    kind = _kind(st.st_mode)
    if kind is not None:
        raise StorageError(
            f"storage {shown} is {kind}, not a journal file; pass the path of a journal "
            "file (it is created if absent) or a database URL"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise StorageError(f"storage file {shown} is not readable and writable by this user")
    if st.st_size == 0:
        return
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if head.startswith(b"SQLite format 3\x00"):
        raise StorageError(
            f"storage {shown} is an SQLite database, not a journal file; "
            f"pass it as a URL: sqlite:///{os.path.abspath(path)}"
        )
    first, newline, _ = head.partition(b"\n")
    if newline and _is_record(first):
        return
    if not newline and head.startswith(_RECORD_START):
        return  # a journal whose first record is long, or torn: JournalFile handles both
    raise StorageError(
        f"storage file {shown} exists but is not an Optuna journal (its first line is not a "
        "journal record); autoclip will not write to it: pass another --storage path"
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked (a signal, a nearly full disk)
        view = view[os.write(fd, view) :]


class JournalFile(BaseJournalBackend):
    """An Optuna journal backend on a local file; see the module docstring.

    Reads are lock-free (as in Optuna's ``JournalFileBackend``): a line still being written
    has no newline yet and is left for the next read. Appends take the lock, repair a torn
    tail, write with ``os.write`` in full, ``fsync``, and undo themselves on an error.
    """

    def __init__(self, path: str) -> None:
        check_journal_path(path)
        self.path = os.path.abspath(path)
        self._lock = FileLock(self.path)
        # Record number -> byte offset of that record, for incremental reads. Records are
        # numbered as they are yielded, so a skipped (torn) line takes no number.
        self._offsets: dict[int, int] = {0: 0}
        self._warned: set[str] = set()
        with self._lock:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                self._repair_tail(fd)
            finally:
                os.close(fd)

    # -- reading ---------------------------------------------------------------------------
    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        start = max(n for n in self._offsets if n <= log_number_from)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size  # what existed when the read began
            f.seek(self._offsets[start])
            number, offset = start, self._offsets[start]
            for line in f:
                if offset + len(line) > size or not line.endswith(b"\n"):
                    break  # being written right now, or torn: not a record yet
                offset += len(line)
                record = self._decode(line, offset)
                if record is None:
                    continue
                number += 1
                self._offsets.setdefault(number, offset)
                if number - 1 >= log_number_from:
                    yield record

    def _decode(self, line: bytes, end: int) -> dict[str, Any] | None:
        try:
            return json.loads(line)
        except ValueError:
            pass
        # An older autoclip appended a record onto a torn one: keep the whole record at the
        # end of the line, drop the torn fragment before it.
        at = line.rfind(_RECORD_START)
        if at > 0:
            try:
                record = json.loads(line[at:])
            except ValueError:
                record = None
            if record is not None:
                self._warn(
                    "glued",
                    f"journal {self.path!r}: a torn record ({at} bytes) was glued to the next "
                    "one by an earlier write; it is skipped and the record after it kept",
                )
                return record
        raise StorageError(
            f"journal {self.path!r} has a damaged record ending at byte {end} that cannot be "
            "read; restore the file from a copy, or start a new study with another --storage"
        )

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    # -- writing ---------------------------------------------------------------------------
    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in logs).encode()
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            try:
                self._repair_tail(fd)
                size = os.fstat(fd).st_size
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                except OSError as exc:
                    self._undo(fd, size)
                    raise StorageError(self._write_error(exc)) from None
            finally:
                os.close(fd)

    def _write_error(self, exc: OSError) -> str:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is used up"
            return (
                f"cannot write to journal {self.path!r}: {what} ({os.strerror(exc.errno)}); "
                "nothing completed is lost: free some space and rerun the same command to resume"
            )
        return f"cannot write to journal {self.path!r}: {exc.strerror or exc}"

    @staticmethod
    def _undo(fd: int, size: int) -> None:
        try:
            os.ftruncate(fd, size)  # a partial record is never left behind
        except OSError:
            pass  # then the next append repairs the torn tail

    def _repair_tail(self, fd: int) -> None:
        """Cut a torn last record (no newline) off the file and keep it in ``<path>.torn``.

        Called with the lock held: no live writer is mid-write, so a tail without a newline
        is what a dead writer or a full disk left.
        """
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        end = size
        while end > 0:  # find the last newline, reading backwards in blocks
            begin = max(0, end - 65536)
            block = os.pread(fd, end - begin, begin)
            at = block.rfind(b"\n")
            if at >= 0:
                end = begin + at + 1
                break
            end = begin
        torn = os.pread(fd, size - end, end)
        try:
            with open(self.path + ".torn", "ab") as keep:
                keep.write(torn + b"\n")
        except OSError:
            pass  # a full disk: the fragment is unreadable anyway
        os.ftruncate(fd, end)
        self._warn(
            "torn",
            f"journal {self.path!r} ended in a torn record ({size - end} bytes, from an "
            f"interrupted write); it was cut off and kept in {self.path + '.torn'!r}; "
            "every complete record is kept",
        )
