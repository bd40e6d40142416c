"""Shared machinery of the dataset converters: target folder, idempotency, atomic writes, progress and reports.

Every converter builds its dataset in a staging folder next to the target (``<root>/.nnunet_ext_partial-*``) and
renames it into place only once everything succeeded, so a failed or interrupted conversion leaves nothing
half-written and an existing dataset untouched. The checks that protect an existing dataset (a different dataset
under the same folder, another name with the same id) run before the build and again under a lock on the dataset id
at the rename, so two conversions to one id at the same time cannot replace each other's dataset or leave two
folders with one id. Staging folders of killed conversions (their process is gone) are removed when the next
conversion to that id starts. ``conversion_report.json`` beside ``dataset.json`` records the
converter, its options, a fingerprint of the inputs, the converted and skipped cases (with the reason) and the size and
SHA-256 of every output file. A re-run with the same inputs and options finds it and reports "already converted"
without writing anything; a *different* dataset under the same id is only replaced with ``overwrite=True``.

Output layout is nnU-Net v2's raw format (``imagesTr/{case}_{channel:04d}.nii.gz``, ``labelsTr/{case}.nii.gz``,
``imagesTs/``; see nnU-Net's ``documentation/dataset_format.md``). SimpleITK arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import SimpleITK as sitk

from nnunet_ext.conversion.staging import (  # noqa: F401  (re-exported)
    PARTIAL_PREFIX,
    conversion_lock,
    remove_stale_staging,
    staging_prefix,
)
from nnunet_ext.data.geometry import (  # noqa: F401  re-exported for the converters
    error_summary,
    geometry_mismatch,
    header_mismatch,
    with_geometry_of,
)
from nnunet_ext.data.geometry import image_header as _image_header
from nnunet_ext.errors import NnunetExtError

REPORT_FILE = "conversion_report.json"
FILE_ENDING = ".nii.gz"
UNKNOWN_LICENCE = "unknown"
# what nnU-Net's generate_dataset_json writes when no licence is given; never written by nnunet-ext
PLACEHOLDER_LICENCES = ("Whoever converted this dataset was lazy and didn't look it up!", "hands off!", "")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_PARTIAL_HASH_BYTES = 1 << 16
T = TypeVar("T")


class ConversionError(NnunetExtError, ValueError):
    """Bad converter input. The message names the case (or file) and how to fix it."""


@dataclass(frozen=True)
class SkippedCase:
    case: str
    reason: str


@dataclass
class ConversionResult:
    """What a converter did. ``cases`` are training cases (imagesTr + labelsTr), ``test_cases`` went to imagesTs."""

    folder: Path
    dataset_name: str
    cases: list[str] = field(default_factory=list)
    test_cases: list[str] = field(default_factory=list)
    skipped: list[SkippedCase] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    already_converted: bool = False
    reports: dict[str, Path] = field(default_factory=dict)

    @property
    def dataset_id(self) -> int:
        return int(self.dataset_name[7:10])

    def summary(self) -> str:
        head = (f"{self.dataset_name}: already converted from identical inputs and options; nothing changed"
                if self.already_converted else f"{self.dataset_name}: converted")
        lines = [f"{head} ({len(self.cases)} training case(s), {len(self.test_cases)} test case(s)) in {self.folder}"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} case(s):")
            lines += [f"  - {s.case}: {s.reason}" for s in self.skipped]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s):")
            lines += [f"  - {w}" for w in self.warnings]
        lines += [f"{k}: {v}" for k, v in self.reports.items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- names and paths
def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset{id:03d}_{name}`` after checking both parts (nnU-Net reads the id from characters 7-9)."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id {dataset_id!r} is invalid. Fix: pass an integer 1-999 with -d.")
    if not _NAME_RE.match(name or ""):
        raise ConversionError(f"dataset name {name!r} is invalid. Fix: use letters, digits, '_' and '-' only "
                              "(--name).")
    return f"Dataset{dataset_id:03d}_{name}"


def resolve_output_root(output: str | os.PathLike | None) -> Path:
    """``output`` if given, else ``$nnUNet_raw``."""
    if output is not None:
        return Path(output).expanduser().resolve()
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise ConversionError("nnUNet_raw is not set and no output root was given. Fix: export nnUNet_raw=/path or "
                              "pass -o ROOT.")
    return Path(raw).expanduser().resolve()


def existing_path(path: str | os.PathLike, what: str, *, folder: bool | None = None) -> Path:
    """``path`` as an absolute :class:`Path`, or a :class:`ConversionError` saying what is missing."""
    p = Path(path).expanduser()
    if not p.exists() or (folder is True and not p.is_dir()) or (folder is False and not p.is_file()):
        kind = "folder" if folder else "file" if folder is False else "path"
        raise ConversionError(f"{what}: {kind} {p} does not exist. Fix: check the path.")
    return p.resolve()


def safe_case_id(text: str) -> str:
    """A case identifier usable in nnU-Net file names: letters, digits, '-' and '_' only."""
    out = re.sub(r"[^A-Za-z0-9_-]+", "_", str(text).strip()).strip("_")
    if not out:
        raise ConversionError(f"cannot derive a case id from {text!r}. Fix: give the case a name with letters/digits.")
    return out


def check_unique_cases(entries: Iterable[tuple[str, str]], fix: str) -> None:
    """Raise naming every case id that occurs more than once; ``entries`` are ``(case_id, where it came from)``."""
    seen: dict[str, list[str]] = {}
    for case, origin in entries:
        seen.setdefault(case, []).append(origin)
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    if dups:
        listing = "; ".join(f"{k!r} from {', '.join(v)}" for k, v in sorted(dups.items()))
        raise ConversionError(f"duplicate case id(s): {listing}. Fix: {fix}")


# --------------------------------------------------------------------------- images
def check_file(path: str | os.PathLike, case: str, what: str = "image", image: sitk.Image | None = None) -> None:
    """:func:`nnunet_ext.data.integrity.check_image_file` as a :class:`ConversionError` (so ``--skip-invalid`` can
    skip the case): a truncated file (which SimpleITK reads as zeros without an error) or NaN / infinite voxels.
    ``image``: SimpleITK's read of ``path``, checked instead of reading the file again where that is enough."""
    from nnunet_ext.data.integrity import ImageFileError, check_image_file, check_voxels, needs_own_read

    try:
        if image is not None and not needs_own_read(path):
            check_voxels(sitk.GetArrayViewFromImage(image), path, case, what)
        else:
            check_image_file(path, case, what)
    except ImageFileError as e:
        raise ConversionError(f"{e} Or pass --skip-invalid to leave the case out.") from e


def read_image(path: str | os.PathLike, case: str, what: str = "image") -> sitk.Image:
    """Read an image file with SimpleITK; a missing, corrupt, truncated or NaN-holding file raises a
    :class:`ConversionError` naming the case and the file (see :func:`check_file`)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"case {case!r}: {what} file {path} does not exist. Fix: check the path.")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ConversionError(f"case {case!r}: cannot read {what} {path} ({error_summary(e)}). The file is corrupt or "
                              "not an image. Fix: re-download or re-export it, or pass --skip-invalid to leave the "
                              "case out.") from e
    check_file(path, case, what, image)
    return image


def write_image(image: sitk.Image, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


# --------------------------------------------------------------------------- fingerprints
def _partial_sha(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_PARTIAL_HASH_BYTES))
        if size > 2 * _PARTIAL_HASH_BYTES:
            f.seek(-_PARTIAL_HASH_BYTES, os.SEEK_END)
        h.update(f.read())
    return h.hexdigest()


def fingerprint_inputs(files: Iterable[str | os.PathLike], root: str | os.PathLike | None) -> dict[str, list]:
    """``{relative path: [size, sha256 of the first and last 64 KiB]}``: cheap, and stable when a source is moved."""
    out: dict[str, list] = {}
    root = Path(root).resolve() if root is not None else None
    for f in files:
        p = Path(f).resolve()
        try:
            rel = p.relative_to(root).as_posix() if root is not None else p.name
        except ValueError:
            rel = "<outside>/" + p.name
        size = p.stat().st_size
        out[rel] = [size, _partial_sha(p, size)]
    return dict(sorted(out.items()))


def files_under(folder: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def hash_outputs(folder: Path) -> dict[str, list]:
    out = {}
    for p in files_under(folder):
        rel = p.relative_to(folder).as_posix()
        if rel == REPORT_FILE:
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[rel] = [p.stat().st_size, h.hexdigest()]
    return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


# --------------------------------------------------------------------------- staging
class Stage:
    """The dataset folder being built (``folder``) plus a scratch folder; both are discarded on failure."""

    def __init__(self, folder: Path, scratch: Path, skip_invalid: bool, licence: str | None = None):
        self.folder = folder
        self.scratch = scratch
        self.skip_invalid = skip_invalid
        self.licence = licence  # the user's --licence (None: the converter's own, else "unknown")
        self.cases: list[str] = []
        self.test_cases: list[str] = []
        self.skipped: list[SkippedCase] = []
        self.warnings: list[str] = []
        self.reports: dict[str, str] = {}
        folder.mkdir(parents=True)
        scratch.mkdir(parents=True)

    # reporting
    def skip(self, case: str, reason: str) -> None:
        """Record and print a case that is left out of the dataset."""
        self.skipped.append(SkippedCase(case, reason))
        _echo(f"skipped case {case!r}: {reason}")

    def incomplete(self, case: str, reason: str, fix: str) -> None:
        """A case whose image or label is missing: a :class:`ConversionError` naming the case and ``fix``, or with
        ``skip_invalid`` a skipped (and reported) case."""
        if not self.skip_invalid:
            raise ConversionError(f"case {case!r}: {reason}. Fix: {fix}, or pass --skip-invalid to leave it out.")
        self.skip(case, reason)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        _echo(f"WARNING: {message}")

    def add_report(self, key: str, filename: str) -> Path:
        """Register a report file written beside dataset.json (path relative to the dataset folder)."""
        self.reports[key] = filename
        return self.folder / filename

    # writing
    def image_path(self, case: str, channel: int, test: bool = False) -> Path:
        return self.folder / ("imagesTs" if test else "imagesTr") / f"{case}_{channel:04d}{FILE_ENDING}"

    def label_path(self, case: str) -> Path:
        return self.folder / "labelsTr" / f"{case}{FILE_ENDING}"

    def write_case(self, case: str, images: Sequence[sitk.Image], label: sitk.Image | None) -> None:
        """Write one case: every channel, plus ``label`` (-> training case) or no label (-> imagesTs)."""
        test = label is None
        for i, img in enumerate(images):
            write_image(img, self.image_path(case, i, test))
        if label is not None:
            write_image(label, self.label_path(case))
        (self.test_cases if test else self.cases).append(case)

    def discard_case(self, case: str) -> None:
        for sub in ("imagesTr", "imagesTs"):
            for p in (self.folder / sub).glob(f"{case}_[0-9][0-9][0-9][0-9]{FILE_ENDING}"):
                p.unlink()
        self.label_path(case).unlink(missing_ok=True)
        for lst in (self.cases, self.test_cases):
            if case in lst:
                lst.remove(case)

    def for_each(self, items: Sequence[tuple[str, T]], fn: Callable[[str, T], None], desc: str) -> None:
        """Call ``fn(case, item)`` per case under a progress bar; with ``skip_invalid`` a :class:`ConversionError`
        skips (and reports) the case instead of aborting the conversion."""
        from tqdm.auto import tqdm

        for case, item in tqdm(items, desc=desc, unit="case", file=sys.stderr, dynamic_ncols=True,
                               disable=not items):
            try:
                fn(case, item)
            except ConversionError as e:
                if not self.skip_invalid:
                    raise
                self.discard_case(case)
                self.skip(case, str(e))

    def adopt(self, folder: Path) -> None:
        """Make ``folder`` (e.g. the output of one of nnU-Net's converters, inside scratch) the dataset folder."""
        shutil.rmtree(self.folder)
        os.replace(folder, self.folder)

    def collect_cases(self) -> None:
        """Set ``cases`` / ``test_cases`` from the files present (for adopted folders)."""
        self.cases = _identifiers(self.folder / "imagesTr")
        self.test_cases = _identifiers(self.folder / "imagesTs")

    def write_dataset_json(self, channel_names: Mapping[int | str, str], labels: Mapping[str, int],
                           metadata=None, **extra) -> dict:
        """nnU-Net's ``generate_dataset_json`` (numTraining = training cases written) plus, when given, the
        validated ``nnunet_ext`` metadata block (:class:`nnunet_ext.data.metadata.DatasetMetadata`). The licence is
        the user's ``--licence``, else the converter's (``license=`` in ``extra``), else "unknown": never nnU-Net's
        placeholder sentence."""
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

        from nnunet_ext.data.metadata import DatasetMetadata, load_dataset_json, write_metadata

        extra["license"] = self.licence_text(extra.get("license"))
        for sub in ("imagesTr", "labelsTr"):
            (self.folder / sub).mkdir(exist_ok=True)
        generate_dataset_json(str(self.folder), {str(k): v for k, v in channel_names.items()}, dict(labels),
                              len(self.cases), FILE_ENDING, **extra)
        path = str(self.folder / "dataset.json")
        if metadata is None:
            return load_dataset_json(path)
        dj = write_metadata(path, metadata)
        DatasetMetadata.from_dataset_json(dj, self.cases)
        return dj


    def licence_text(self, converters: str | None = None) -> str:
        """The licence to write: the user's, else ``converters`` (the converter's own or the source's) unless it
        is empty or nnU-Net's placeholder, else "unknown"."""
        if self.licence and self.licence.strip():
            return self.licence.strip()
        if converters is not None and str(converters).strip() not in PLACEHOLDER_LICENCES:
            return str(converters).strip()
        return UNKNOWN_LICENCE

    def fix_licence(self, dataset_json: dict) -> dict:
        """``dataset_json`` (of one of nnU-Net's converters) with :meth:`licence_text` under ``licence``."""
        dataset_json["licence"] = self.licence_text(dataset_json.get("licence", dataset_json.get("license")))
        dataset_json.pop("license", None)
        return dataset_json


def _identifiers(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    n = len(FILE_ENDING) + 5
    return sorted({p.name[:-n] for p in folder.iterdir() if p.name.endswith(FILE_ENDING) and len(p.name) > n})


def _echo(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stdout)


# --------------------------------------------------------------------------- jobs
class ConversionJob:
    """One conversion into ``<root>/Dataset{id}_{name}``: idempotency check, staging, report, atomic swap.

    Args:
        converter: the converter's CLI name (recorded in the report).
        inputs: every input file; their relative paths, sizes and partial hashes form the fingerprint.
        source: the folder ``inputs`` are made relative to.
        options: everything else that changes the output (JSON-serialisable).
    """

    def __init__(self, converter: str, dataset_id: int, name: str, output: str | os.PathLike | None,
                 overwrite: bool, inputs: Iterable[str | os.PathLike], source: str | os.PathLike | None,
                 options: Mapping[str, Any], skip_invalid: bool = False, licence: str | None = None):
        self.converter = converter
        self.dataset_id = dataset_id
        self.dataset_name = dataset_folder_name(dataset_id, name)
        self.root = resolve_output_root(output)
        self.target = self.root / self.dataset_name
        self.overwrite = overwrite
        self.skip_invalid = skip_invalid
        self.licence = licence
        self.options = _jsonable({**options, **({"licence": licence} if licence else {})})
        self.inputs = fingerprint_inputs(inputs, source)

    def run(self, build: Callable[[Stage], None]) -> ConversionResult:
        """Build the dataset with ``build(stage)`` unless an identical conversion exists; print and return. The
        target checks run before the build and again, under the dataset id's lock, before the rename."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in remove_stale_staging(self.root, self.dataset_id):
            _echo(f"removed {path}, the staging folder of a conversion that was killed")
        done = self._check_target(after_build=False)
        if done is not None:
            print(done.summary())
            return done
        parent = Path(tempfile.mkdtemp(prefix=staging_prefix(self.dataset_name), dir=self.root))
        try:
            stage = Stage(parent / self.dataset_name, parent / "scratch", self.skip_invalid, self.licence)
            build(stage)
            shutil.rmtree(stage.scratch, ignore_errors=True)
            self._finish(stage)
            with conversion_lock(self.root, self.dataset_id):
                done = self._check_target(after_build=True)
                if done is None:
                    self._swap_in(stage.folder, self._conflicts(), parent)
        finally:
            shutil.rmtree(parent, ignore_errors=True)
        if done is not None:
            print(done.summary())
            return done
        result = ConversionResult(self.target, self.dataset_name, sorted(stage.cases), sorted(stage.test_cases),
                                  list(stage.skipped), list(stage.warnings), False,
                                  {k: self.target / v for k, v in stage.reports.items()})
        _warn_other_folders(self.dataset_id, self.dataset_name, result)
        print(result.summary())
        return result

    # ----------------------------------------------------------------- internals
    def _conflicts(self) -> list[Path]:
        return sorted(p for p in self.root.glob(f"Dataset{self.dataset_id:03d}_*")
                      if p.is_dir() and p.name != self.dataset_name)

    def _check_target(self, after_build: bool) -> ConversionResult | None:
        """The existing conversion when it is identical (nothing to do), None when the build may go into place, or
        a :class:`ConversionError` when it would replace a different dataset or share its id without
        ``overwrite``. ``after_build``: checked again at the rename (another conversion may have finished since)."""
        meanwhile = " (written by another conversion while this one ran)" if after_build else ""
        if self.target.exists():
            why = self._difference(self.target)
            if why is None:
                return self._result_from_report(self.target)
            if not self.overwrite:
                raise ConversionError(
                    f"{self.target} already exists{meanwhile} and holds a different dataset ({why}). Nothing was "
                    f"changed. Fix: pass --overwrite (overwrite=True) to replace it, or choose a free dataset id with "
                    "-d.")
        conflicts = self._conflicts()
        if conflicts and not self.overwrite:
            raise ConversionError(
                f"dataset id {self.dataset_id} is already used by {', '.join(str(c) for c in conflicts)}{meanwhile}. "
                "Nothing was changed. Fix: choose a free id with -d, or pass --overwrite to replace it.")
        return None

    def _finish(self, stage: Stage) -> None:
        if not stage.cases and not stage.test_cases:
            why = "; ".join(f"{s.case}: {s.reason}" for s in stage.skipped[:10]) or "no input cases were found"
            raise ConversionError(f"no case could be converted ({why}). Nothing was written. Fix the inputs above.")
        if not (stage.folder / "dataset.json").is_file():
            raise RuntimeError(f"converter {self.converter!r} wrote no dataset.json (a bug in nnunet_ext)")
        report = {"converter": self.converter, "format_version": 1, "dataset_name": self.dataset_name,
                  "options": self.options, "inputs": self.inputs,
                  "cases": sorted(stage.cases), "test_cases": sorted(stage.test_cases),
                  "skipped": [{"case": s.case, "reason": s.reason} for s in stage.skipped],
                  "warnings": list(stage.warnings), "reports": dict(stage.reports),
                  "outputs": hash_outputs(stage.folder)}
        with open(stage.folder / REPORT_FILE, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)

    def _swap_in(self, built: Path, conflicts: list[Path], parent: Path) -> None:
        old = []
        for i, p in enumerate(([self.target] if self.target.exists() else []) + conflicts):
            dst = parent / f"replaced-{i}"
            os.replace(p, dst)
            old.append((dst, p))
        try:
            os.replace(built, self.target)
        except OSError:
            for dst, p in old:  # put the previous datasets back
                os.replace(dst, p)
            raise

    def _difference(self, folder: Path) -> str | None:
        """None if ``folder`` is exactly what this job would write, else why not."""
        try:
            with open(folder / REPORT_FILE, encoding="utf-8") as f:
                rep = json.load(f)
        except (OSError, json.JSONDecodeError):
            return f"it has no readable {REPORT_FILE}, so it was not written by nnunet-ext convert"
        if rep.get("converter") != self.converter:
            return f"it was written by converter {rep.get('converter')!r}, not {self.converter!r}"
        if rep.get("options") != self.options:
            old = rep.get("options") or {}
            keys = sorted(k for k in set(old) | set(self.options) if old.get(k) != self.options.get(k))
            return "it was converted with other options: " + ", ".join(
                f"{k}={old.get(k)!r} (now {self.options.get(k)!r})" for k in keys)
        if rep.get("inputs") != self.inputs:
            old = rep.get("inputs") or {}
            changed = sorted(k for k in set(old) | set(self.inputs) if old.get(k) != self.inputs.get(k))
            return f"it was converted from other input files ({len(changed)} differ, e.g. {changed[0]})"
        outputs = rep.get("outputs") or {}
        present = {p.relative_to(folder).as_posix(): p for p in files_under(folder)}
        present.pop(REPORT_FILE, None)
        for rel, (size, _) in outputs.items():
            if rel not in present:
                return f"its file {rel} was removed after the conversion"
            if present[rel].stat().st_size != size:
                return f"its file {rel} was modified after the conversion"
        extra = sorted(set(present) - set(outputs))
        if extra:
            return f"it contains files the converter did not write (e.g. {extra[0]})"
        return None

    def _result_from_report(self, folder: Path) -> ConversionResult:
        with open(folder / REPORT_FILE, encoding="utf-8") as f:
            rep = json.load(f)
        return ConversionResult(folder, self.dataset_name, list(rep.get("cases", [])), list(rep.get("test_cases", [])),
                                [SkippedCase(s["case"], s["reason"]) for s in rep.get("skipped", [])],
                                list(rep.get("warnings", [])), True,
                                {k: folder / v for k, v in (rep.get("reports") or {}).items()})


def _warn_other_folders(dataset_id: int, dataset_name: str, result: ConversionResult) -> None:
    """nnU-Net resolves an id through raw, preprocessed and results; another name there would make it ambiguous."""
    for var in ("nnUNet_preprocessed", "nnUNet_results"):
        root = os.environ.get(var)
        if not root or not os.path.isdir(root):
            continue
        for p in Path(root).glob(f"Dataset{dataset_id:03d}_*"):
            if p.name != dataset_name:
                msg = (f"{var} holds {p.name} with the same id {dataset_id}; nnU-Net will find two names for the id. "
                       "Fix: delete it or convert under another id.")
                result.warnings.append(msg)
                _echo(f"WARNING: {msg}")


# --------------------------------------------------------------------------- small utilities
def most_common(values: Iterable[T]) -> T:
    return Counter(values).most_common(1)[0][0]


def parse_mapping(items: Sequence[str] | None, what: str) -> dict[int, str]:
    """``["1=ADC", "2=DWI"]`` -> ``{1: "ADC", 2: "DWI"}`` (CLI ``--rename-channel`` style)."""
    out: dict[int, str] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip().isdigit() or not value.strip():
            raise ConversionError(f"{what}: {item!r} is not INDEX=NAME. Fix: e.g. 1=ADC.")
        out[int(key)] = value.strip()
    return out


# --------------------------------------------------------------------------- CLI
def add_common_arguments(parser: argparse.ArgumentParser, default_name: str, *, source_help: str) -> None:
    """Flags every converter shares (nnU-Net style ``-i``, ``-d``, ``-o``)."""
    parser.add_argument("-i", dest="source", required=True, help=source_help)
    parser.add_argument("-d", dest="dataset_id", type=int, required=True, help="target dataset id (1-999)")
    parser.add_argument("-o", dest="output", default=None,
                        help="output root (default: $nnUNet_raw); the dataset goes to ROOT/DatasetXXX_NAME")
    parser.add_argument("--name", default=default_name, help=f"dataset name (default: {default_name})")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset under the same id")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="skip (and report) cases with bad input instead of aborting")
    parser.add_argument("--licence", "--license", dest="licence", default=None,
                        help="the data's licence, written into dataset.json (default: the source's, else 'unknown')")


@contextmanager
def nnunet_raw_redirected(raw: Path):
    """Point nnU-Net's ``nnUNet_raw`` at ``raw`` (and hide preprocessed/results) while one of nnU-Net's own
    converters runs, so it writes into our staging area and its dataset-id checks only see that area."""
    keys = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    saved = {k: os.environ.get(k) for k in keys}
    raw.mkdir(parents=True, exist_ok=True)
    os.environ["nnUNet_raw"] = str(raw)
    os.environ.pop("nnUNet_preprocessed", None)
    os.environ.pop("nnUNet_results", None)
    try:
        yield raw
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def image_header(path: str | os.PathLike, case: str, what: str = "image") -> sitk.ImageFileReader:
    """:func:`nnunet_ext.data.geometry.image_header`, failing with :class:`ConversionError` (``--skip-invalid``)."""
    return _image_header(path, case, what, error=ConversionError,
                         fix="re-download or re-export it, or pass --skip-invalid to leave the case out")
