"""Staging folders and the dataset-id lock of conversions that may run at the same time or be killed.

A conversion builds its dataset in ``<root>/<prefix>DatasetXXX_Name-<host>-<pid>-*`` and renames it into place under
an exclusive lock on the dataset id (:func:`conversion_lock`), after checking the target once more. A staging folder
whose process is gone on this host is a killed conversion's leftover: :func:`remove_stale_staging` deletes it when
the next conversion to that id starts (folders of other hosts are left alone: their processes cannot be checked).
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

PARTIAL_PREFIX = ".nnunet_ext_partial-"


def _host() -> str:
    import socket

    return re.sub(r"[^A-Za-z0-9]+", "", socket.gethostname())[:32] or "host"


def staging_prefix(dataset_name: str, prefix: str = PARTIAL_PREFIX) -> str:
    """``<prefix><dataset name>-<host>-<pid>-``: a staging folder names the process that builds it, so that a later
    conversion can tell a killed one's leftovers from a running one's."""
    return f"{prefix}{dataset_name}-{_host()}-{os.getpid()}-"


def remove_stale_staging(root: Path, dataset_id: int, prefix: str = PARTIAL_PREFIX) -> list[Path]:
    """Delete staging folders of dataset ``dataset_id`` in ``root`` whose process, on this host, is gone (folders
    of other hosts, or without a process id, are left alone). Returns the removed folders."""
    from nnunet_ext.data.files import pid_alive

    pattern = re.compile(rf"^{re.escape(prefix)}Dataset{dataset_id:03d}_[A-Za-z0-9_-]*?-{re.escape(_host())}-(\d+)-")
    removed = []
    for p in Path(root).glob(f"{prefix}Dataset{dataset_id:03d}_*"):
        m = pattern.match(p.name)
        if p.is_dir() and m and not pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextmanager
def conversion_lock(root: Path, dataset_id: int):
    """Exclusive lock on dataset id ``dataset_id`` in the output root (a hidden lock file there) while a finished
    build is checked once more and renamed into place."""
    from nnunet_ext.data.files import folder_lock

    with folder_lock(root, f".nnunet_ext_convert_{dataset_id:03d}.lock"):
        yield


__all__ = ["PARTIAL_PREFIX", "conversion_lock", "remove_stale_staging", "staging_prefix"]
