"""Per-case result tables of the map-writing commands (``nnunet-ext attention``, ``nnunet-ext gradcam``): a JSON file
(the run's identity + one row per case or lesion) and a CSV of the same rows, merged across reruns so that nothing
written before for other cases is lost, and an image writer check for maps in the input geometry."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence


def earlier_rows(json_path: str, rows_key: str, meta: dict, merge_keys: Sequence[str], done_cases: set[str],
                 error: type[Exception], command: str) -> list[dict]:
    """Rows of an existing table for cases not run again. Rows of another run (a differing value of any of
    ``merge_keys``: model, folds, ...) are refused rather than mixed, before any case runs."""
    if not os.path.isfile(json_path):
        return []
    try:
        with open(json_path, encoding="utf-8") as f:
            stored = json.load(f)
        old = [r for r in stored[rows_key] if r["case"] not in done_cases]
    except (ValueError, KeyError, TypeError) as e:
        raise error(f"{json_path} exists but was not written by {command} ({e}). Fix: move it away or choose another "
                    "output folder (-o).") from e
    other = [k for k in merge_keys if stored.get(k) != meta.get(k)]
    if old and other:
        raise error(f"{json_path} holds rows of another run ({', '.join(f'{k}={stored.get(k)!r}' for k in other)}; "
                    f"this run: {', '.join(f'{k}={meta.get(k)!r}' for k in other)}). Fix: choose another output "
                    "folder (-o).")
    return old


def _replace(path: str, write) -> None:
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
        write(f)
    os.replace(path + ".tmp", path)


def write_tables(json_path: str, csv_path: str, rows_key: str, rows: list[dict], meta: dict) -> None:
    """``{**meta, rows_key: rows}`` as JSON and the rows as CSV (list values joined by spaces), each written to a
    temporary file first and then renamed, so that a killed run leaves the previous tables intact."""
    _replace(json_path, lambda f: json.dump({**meta, rows_key: rows}, f, indent=2))
    columns = []
    for r in rows:
        columns += [k for k in r if k not in columns]

    def write_csv(f):
        w = csv.DictWriter(f, columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: (" ".join(str(v) for v in r[k]) if isinstance(r.get(k), list) else r.get(k, ""))
                        for k in columns})

    _replace(csv_path, write_csv)


def require_geometry_writer(reader_writer, error: type[Exception], what: str, fix: str) -> None:
    """Maps are written as float images in the input geometry with SimpleITK or nibabel; other readers (TIFF,
    natural 2D images) carry no geometry to write them in."""
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO, NibabelIOWithReorient
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    if not issubclass(reader_writer, (SimpleITKIO, NibabelIO, NibabelIOWithReorient)):
        raise error(f"{what} are written as images in the input geometry, which needs SimpleITK- or nibabel-readable "
                    f"images; this model reads its images with {reader_writer.__name__}. Fix: {fix}")
