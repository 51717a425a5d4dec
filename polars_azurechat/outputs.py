"""The files a job writes: taken exclusively, checked before any request, never clobbered.

Two pieces, both used by the ``polars-azurechat`` command and by batch mode:

:class:`FileLock`
    An exclusive, OS-level lock on a path, held by one job at a time: a small lock
    file beside it (``<path>.lock``) locked with ``flock``. The lock file says who
    holds it (pid, host, since when), so a job refused names the one it waits for.
    The operating system drops the lock of a process that dies (``kill -9``
    included): the lock file it leaves behind is taken over by the next job.

:class:`OutputFile`
    One output file of a job (``run``'s OUTPUT_PATH, ``plan --rows-out``): checked
    and taken at the start (the directory exists, the path is not a directory, not
    an existing file without ``--overwrite``, not a file the job reads: the input,
    the cache and its ``-wal``/``-shm``/``-journal`` files), written beside it as
    ``<path>.partial``, and renamed into place at the end; without ``overwrite`` a
    file that appeared meanwhile is never replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

try:
    import fcntl as _fcntl

    fcntl: Any = _fcntl
except ImportError:  # pragma: no cover - not a POSIX system: the pid check alone
    fcntl = None

__all__ = [
    "FileBusyError",
    "FileLock",
    "Holder",
    "OutputError",
    "OutputFile",
    "reads_of",
    "sqlite_files",
]

logger = logging.getLogger(__name__)

#: errno values of a file system that has no ``flock`` (the pid check is used there)
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


class OutputError(ValueError):
    """An output path that cannot be used; the message is one line naming it."""


class FileBusyError(OutputError):
    """The path is held by another job; :attr:`holder` says which (or ``None``)."""

    def __init__(self, message: str, holder: Holder | None) -> None:
        super().__init__(message)
        self.holder = holder


@dataclasses.dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a :class:`FileLock`: a process on a host, since a wall-clock time."""

    pid: int
    host: str
    since: float

    def __str__(self) -> str:
        when = datetime.datetime.fromtimestamp(self.since, datetime.UTC)
        mine = " (this process)" if self.is_this_process() else ""
        return f"pid {self.pid}{mine} on {self.host} since {when:%Y-%m-%d %H:%M:%S} UTC"

    def is_this_process(self) -> bool:
        """Whether the holder is the calling process."""
        return self.pid == os.getpid() and self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """Whether the holder may still run: ``False`` only for a dead pid here."""
        if self.host != socket.gethostname():
            return True  # cannot be told from here
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class FileLock:
    """An exclusive lock on ``path``, held through the lock file ``lock_path``.

    Parameters
    ----------
    lock_path
        The lock file (created if missing, removed when released).
    what
        What is locked, for messages (``"out.parquet"``, ``"cache c.sqlite"``).

    Raises
    ------
    FileBusyError
        From :meth:`acquire`: another job (of this or another process) holds it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.parquet"
    >>> with FileLock(target.with_name("out.parquet.lock"), what=str(target)) as lock:
    ...     other = FileLock(lock.lock_path, what=str(target))
    ...     try:
    ...         other.acquire()
    ...     except FileBusyError as exc:
    ...         print(
    ...             "refused:", exc.holder is not None and exc.holder.is_this_process()
    ...         )
    refused: True
    >>> lock.lock_path.exists()  # released: the lock file is gone
    False
    """

    def __init__(self, lock_path: str | os.PathLike[str], *, what: str) -> None:
        self.lock_path = Path(lock_path)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`FileBusyError` naming its holder."""
        if self._fd is not None:
            return
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                taken = self._lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if taken and _same_file(fd, self.lock_path):
                break
            os.close(fd)  # released and removed meanwhile: take the new one
        previous = _read_holder(fd)
        if previous is not None and not previous.is_this_process():
            logger.info(
                "%s: took over the lock %s left by %s (no longer running)",
                self.what,
                self.lock_path,
                previous,
            )
        me = Holder(os.getpid(), socket.gethostname(), time.time())
        data = json.dumps(dataclasses.asdict(me)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd = fd

    def _lock(self, fd: int) -> bool:
        """Lock ``fd``; ``False`` if it must be opened again, raises if it is held."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(_read_holder(fd)) from None
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    raise
            else:
                return True
        # no flock here (some network file systems): the holder's pid decides
        holder = _read_holder(fd)
        if holder is not None and holder.is_alive():
            raise self._busy(holder)
        return True

    def _busy(self, holder: Holder | None) -> FileBusyError:
        who = f"another job ({holder})" if holder else "another job"
        return FileBusyError(
            f"{self.what} is in use by {who}, which holds {self.lock_path}; wait for "
            "it to end or stop it",
            holder,
        )

    def release(self) -> None:
        """Release the lock and remove the lock file (nothing if not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.lock_path):
                with contextlib.suppress(OSError):
                    self.lock_path.unlink()
        finally:
            os.close(fd)  # drops the flock

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FileLock({str(self.lock_path)!r}, held={self.held})"


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _read_holder(fd: int) -> Holder | None:
    """The holder written in a lock file, or ``None`` (empty, or not ours)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
        return Holder(int(data["pid"]), str(data["host"]), float(data["since"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


class OutputFile:
    """One output file of a job: checked and taken at the start, published at the end.

    Parameters
    ----------
    path
        The file to write.
    overwrite
        Whether an existing ``path`` may be replaced.
    name
        How the user named it, for messages (``"OUTPUT_PATH"``, ``"--rows-out"``).
    reads
        The files the job reads, each with what it is (``{"the input file": p}``):
        none of them may be written, nor their SQLite companions
        (:func:`sqlite_files` gives them for a cache).

    Raises
    ------
    OutputError
        From :meth:`open` (and the ``with`` statement): the path cannot be used;
        :class:`FileBusyError` if another job is writing it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "rows.parquet"
    >>> with OutputFile(out, name="--rows-out") as f:
    ...     _ = f.partial.write_text("rows")
    ...     f.publish()
    >>> out.read_text()
    'rows'
    >>> try:
    ...     OutputFile(out, name="--rows-out").open()
    ... except OutputError as exc:
    ...     print(str(exc).replace(str(out), "rows.parquet"))
    --rows-out rows.parquet exists; pass --overwrite to replace it
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        name: str = "the output",
        reads: dict[str, str | os.PathLike[str]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.name = name
        self.reads = {what: Path(p) for what, p in (reads or {}).items()}
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.lock = FileLock(
            self.path.with_name(self.path.name + ".lock"), what=str(self.path)
        )
        self._keep = False

    def open(self) -> Self:
        """Check the path and take it; raises :class:`OutputError` naming the problem."""
        path, name = self.path, self.name
        if path.is_dir():
            raise OutputError(f"{name} {path} is a directory; give a file path")
        if not path.parent.is_dir():
            raise OutputError(
                f"{name} {path}: the directory {path.parent} does not exist"
            )
        try:
            self.lock.acquire()
        except FileBusyError:
            raise
        except OSError as exc:
            raise OutputError(
                f"{name} {path}: cannot write {self.lock.lock_path} "
                f"({exc.strerror or exc})"
            ) from None
        try:
            self._check()
        except BaseException:
            self.lock.release()
            raise
        return self

    def _check(self) -> None:
        """The checks made under the lock (no other job can change their answer)."""
        path, name, partial = self.path, self.name, self.partial
        if path.exists() and not self.overwrite:
            raise OutputError(f"{name} {path} exists; pass --overwrite to replace it")
        written = {path: "", partial: " (written first)", self.lock.lock_path: ""}
        for what, read in self.reads.items():
            for target, note in written.items():
                if _same_path(target, read):
                    shown = "" if target == path else f" {target}"
                    raise OutputError(
                        f"{name} {path}{shown}{note} is {what}; write elsewhere"
                    )
        if partial.is_dir():
            raise OutputError(
                f"{partial} is a directory; it is where {name} {path} is written"
            )
        try:  # the real test of writability (permissions, read-only mounts, quotas)
            partial.touch()
            partial.unlink()
        except OSError as exc:
            raise OutputError(
                f"cannot write {partial} ({exc.strerror or exc}); {name} {path} is "
                "written there first"
            ) from None

    def publish(self) -> None:
        """Move the written partial file to the path.

        Without ``overwrite``, a file that appeared at the path while the job ran
        (another program wrote it) is kept: :class:`OutputError` is raised and the
        partial file keeps the job's output.
        """
        if self.overwrite:
            os.replace(self.partial, self.path)
            return
        appeared = OutputError(
            f"{self.name} {self.path} appeared while the job ran and was kept; "
            f"the job's output is in {self.partial} (pass --overwrite to replace it)"
        )
        try:
            os.link(self.partial, self.path)  # atomic: never replaces a file
        except FileExistsError:
            self._keep = True
            raise appeared from None
        except OSError:  # no hard links here: check, then rename
            if self.path.exists():
                self._keep = True
                raise appeared from None
            os.replace(self.partial, self.path)
            return
        self.partial.unlink()

    def keep_partial(self) -> None:
        """Leave the partial file when the ``with`` block ends with an error."""
        self._keep = True

    def close(self, failed: bool = False) -> None:
        """Release the path; ``failed``: remove the partial file unless kept."""
        try:
            if failed and not self._keep:
                self.partial.unlink(missing_ok=True)
        finally:
            self.lock.release()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc_type is not None)

    def __repr__(self) -> str:
        return f"OutputFile({str(self.path)!r}, overwrite={self.overwrite})"


def sqlite_files(path: str | os.PathLike[str]) -> dict[str, Path]:
    """An SQLite file and its companions, by what each is (for ``reads``).

    Examples
    --------
    >>> sorted(p.name for p in sqlite_files("c.sqlite").values())
    ['c.sqlite', 'c.sqlite-journal', 'c.sqlite-shm', 'c.sqlite-wal']
    """
    p = Path(path)
    return {
        f"the cache file {p}": p,
        **{
            f"the cache's -{suffix} file": p.with_name(f"{p.name}-{suffix}")
            for suffix in ("wal", "shm", "journal")
        },
    }


def _same_path(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (links and relative paths resolved)."""
    with contextlib.suppress(OSError):
        if a.resolve() == b.resolve():
            return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def reads_of(
    input_path: str | os.PathLike[str] | None,
    cache: str | os.PathLike[str] | None,
    others: Iterable[tuple[str, str | os.PathLike[str] | None]] = (),
) -> dict[str, str | os.PathLike[str]]:
    """The files a job reads, for :class:`OutputFile`'s ``reads``.

    Parameters
    ----------
    input_path
        The input file, or ``None``.
    cache
        The ``cache=`` option: a file (with its SQLite companions) or a
        ``redis://`` URL (no file).
    others
        More ``(what, path)`` pairs; ``None`` paths are left out.

    Examples
    --------
    >>> sorted(reads_of("in.parquet", "redis://h/0"))
    ['the input file']
    """
    reads: dict[str, str | os.PathLike[str]] = {}
    if input_path is not None:
        reads["the input file"] = input_path
    if cache is not None and str(cache).split("://", 1)[0] not in ("redis", "rediss"):
        reads.update(sqlite_files(cache))
    reads.update((what, p) for what, p in others if p is not None)
    return reads
