"""File-system helpers for outputs written atomically and by processes running at the same time.

``tempfile.mkstemp`` / ``mkdtemp`` create files 0600 and folders 0700 whatever the umask: a file written through a
temporary name and renamed into place would then be private, and colleagues on shared cluster storage could not read
a ``dataset.json`` or ``classification.json``. :func:`match_open_mode` / :func:`mkdtemp_public` give them the mode a
plain ``open`` / ``mkdir`` would (the umask applied; an existing file keeps its mode). :func:`folder_lock` serialises
read-merge-write updates of one folder between processes (POSIX ``flock``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it; serialised between threads of this module)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def match_open_mode(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give ``tmp`` (made by ``mkstemp``, about to replace ``target``) the mode ``open(target, "w")`` would leave:
    ``target``'s own mode when it exists, else 0666 minus the umask."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    os.chmod(tmp, mode)


def mkdtemp_public(prefix: str, dir: str | os.PathLike) -> str:  # noqa: A002 - tempfile's name
    """``tempfile.mkdtemp`` with the mode ``os.mkdir`` would give (0777 minus the umask) instead of 0700, for a
    staging folder that is renamed into place."""
    path = tempfile.mkdtemp(prefix=prefix, dir=dir)
    os.chmod(path, 0o777 & ~current_umask())
    return path


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str = ".nnunet_ext.lock"):
    """Hold an exclusive lock on ``folder`` (the file ``folder/name``) while the block runs: other processes that
    take the same lock wait. The lock file stays (removing it would race with a waiting process)."""
    import fcntl

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


__all__ = ["current_umask", "folder_lock", "match_open_mode", "mkdtemp_public", "pid_alive"]
