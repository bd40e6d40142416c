"""Case-level metadata carried inside an nnU-Net v2 raw dataset.

nnU-Net copies ``dataset.json`` verbatim from ``nnUNet_raw/DatasetXXX`` into ``nnUNet_preprocessed/DatasetXXX``
(the experiment planner) and into every results folder (``nnUNetTrainer.on_train_start``); the predictor reads it
back from the model folder. Everything case-level therefore lives in one extra key, ``"nnunet_ext"``, of
``dataset.json``: a trained model folder alone knows its class names, phases and tabular features, and nothing is
ever written into the ``nnUNetPlans_<cfg>`` data folders.

Format (``format_version`` 1; every block is optional)::

    "nnunet_ext": {
      "format_version": 1,
      "classification": {"class_names": ["HCC", "metastasis", "benign"], "lesion_labels": [2]},
      "phases": {"order": ["arterial", "portal_venous", "delayed"], "reference": "portal_venous"},
      "tabular": {"feature_names": ["age", "afp"]},
      "cases": {
        "liver_000": {"class": "HCC", "text": "a 23 mm lesion ...", "tabular": [63.0, 12.5]},
        "liver_001": {"class": null}
      }
    }

* ``class`` is a class name from ``class_names`` or its integer index; ``null`` marks a case as explicitly
  unlabeled: it is left out of the classification loss and metrics and still used for segmentation. A case
  without a ``class`` key is an error when a classification block exists.
* ``lesion_labels`` are the segmentation labels that make up "the lesion": the classification loss is applied
  to patches that contain them and inference weights the patch-level class predictions by the predicted
  lesion probability. Default: every foreground label.
* ``phases.order`` names one phase per channel, in channel order. Each ``channel_names`` value must be that
  phase's name or an nnU-Net normalization keyword (a multiphase CT names every channel ``"CT"`` to get CT
  normalisation). ``reference`` is the phase whose features the STD-Net decoder decodes (default: portal venous).
* ``tabular``: every case has a list of finite numbers, one per feature name.
* ``text`` is a free-text lesion description (a string).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnunet_ext.errors import NnunetExtError

METADATA_KEY = "nnunet_ext"
FORMAT_VERSION = 1
UNLABELED = -1
DEFAULT_REFERENCE_PHASES = ("portal_venous", "portal", "venous", "pv")
# channel names that select an nnU-Net normalization scheme (nnunetv2.preprocessing.normalization); a multiphase CT
# names every channel "CT" to get CT normalisation and declares the phase names in "phases"
NORMALIZATION_CHANNEL_NAMES = frozenset({"ct", "nonorm", "zscore", "rescale_to_0_1", "rgb_to_0_1"})


class MetadataError(NnunetExtError, ValueError):
    """Raised for invalid case-level metadata. The message lists every problem with the case ids and the fix."""


@dataclass(frozen=True)
class CaseRecord:
    """Validated metadata of one case. ``class_index`` is ``None`` for an explicitly unlabeled case."""

    class_index: int | None = None
    text: str | None = None
    tabular: tuple[float, ...] | None = None


@dataclass
class DatasetMetadata:
    """Validated view of the ``"nnunet_ext"`` block of a ``dataset.json``."""

    class_names: list[str] | None = None
    lesion_labels: list[int] | None = None
    phases: list[str] | None = None
    reference_phase: str | None = None
    tabular_features: list[str] | None = None
    cases: dict[str, CaseRecord] = field(default_factory=dict)

    # ------------------------------------------------------------------ queries
    @property
    def has_classification(self) -> bool:
        return bool(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    @property
    def num_tabular(self) -> int:
        return len(self.tabular_features) if self.tabular_features else 0

    @property
    def reference_phase_index(self) -> int:
        return self.phases.index(self.reference_phase) if self.phases and self.reference_phase else 0

    def class_targets(self, case_ids: Iterable[str]) -> np.ndarray:
        """Class indices of ``case_ids`` as int64, :data:`UNLABELED` (-1) for unlabeled or unknown cases."""
        out = []
        for k in case_ids:
            rec = self.cases.get(k)
            out.append(UNLABELED if rec is None or rec.class_index is None else rec.class_index)
        return np.asarray(out, dtype=np.int64)

    def tabular_matrix(self, case_ids: Iterable[str]) -> np.ndarray:
        """``(len(case_ids), num_tabular)`` float32 matrix of tabular features."""
        ids = list(case_ids)
        mat = np.zeros((len(ids), self.num_tabular), dtype=np.float32)
        for i, k in enumerate(ids):
            rec = self.cases.get(k)
            if rec is not None and rec.tabular is not None:
                mat[i] = rec.tabular
        return mat

    def texts(self, case_ids: Iterable[str]) -> list[str]:
        """Texts of ``case_ids``; raises :class:`MetadataError` naming every case that has none."""
        ids = list(case_ids)
        missing = [k for k in ids if self.cases.get(k) is None or self.cases[k].text is None]
        if missing:
            raise MetadataError(
                f"{len(missing)} case(s) have no text description: {_fmt_ids(missing)}. Fix: add "
                f'"text": "<description>" to these cases under dataset.json["{METADATA_KEY}"]["cases"].')
        return [self.cases[k].text for k in ids]

    def labeled_case_ids(self) -> list[str]:
        return sorted(k for k, r in self.cases.items() if r.class_index is not None)

    def check_trainable(self, where: str = "dataset.json") -> None:
        """Raise :class:`MetadataError` when classes are declared but no case has a class label: the metadata is
        valid, but a classification head cannot be trained on it (the training would fail late, in sklearn)."""
        if self.has_classification and not self.labeled_case_ids():
            raise MetadataError(
                f"{where}: classification.class_names declares the classes {self.class_names}, but none of the "
                f'{len(self.cases)} cases has a class label (every case is "class": null). Fix: give the labeled '
                f'cases "class": "<name>" under dataset.json["{METADATA_KEY}"]["cases"], or remove the '
                '"classification" block for a segmentation-only dataset.')

    # ------------------------------------------------------------ (de)serialise
    def to_json(self) -> dict:
        """The ``"nnunet_ext"`` block in its canonical form (class labels written as names)."""
        block: dict[str, Any] = {"format_version": FORMAT_VERSION}
        if self.class_names:
            cls: dict[str, Any] = {"class_names": list(self.class_names)}
            if self.lesion_labels is not None:
                cls["lesion_labels"] = [int(i) for i in self.lesion_labels]
            block["classification"] = cls
        if self.phases:
            block["phases"] = {"order": list(self.phases), "reference": self.reference_phase}
        if self.tabular_features:
            block["tabular"] = {"feature_names": list(self.tabular_features)}
        cases = {}
        for k in sorted(self.cases):
            rec = self.cases[k]
            entry: dict[str, Any] = {}
            if self.class_names:
                entry["class"] = None if rec.class_index is None else self.class_names[rec.class_index]
            if rec.text is not None:
                entry["text"] = rec.text
            if rec.tabular is not None:
                entry["tabular"] = list(rec.tabular)
            cases[k] = entry
        block["cases"] = cases
        return block

    @classmethod
    def from_dataset_json(cls, dataset_json: Mapping, case_ids: Iterable[str] | None = None) -> DatasetMetadata | None:
        """Parse and validate the metadata block of ``dataset_json``.

        Args:
            dataset_json: the loaded ``dataset.json``.
            case_ids: the case identifiers that exist in the dataset. When given, metadata entries for unknown
                cases and dataset cases without metadata are reported.

        Returns:
            ``None`` when ``dataset_json`` has no ``"nnunet_ext"`` block.

        Raises:
            MetadataError: listing every problem found, with the offending case ids and how to fix each.
        """
        block = dataset_json.get(METADATA_KEY)
        if block is None:
            return None
        problems: list[str] = []
        if not isinstance(block, Mapping):
            raise MetadataError(f'dataset.json["{METADATA_KEY}"] must be an object, got {type(block).__name__}.')
        version = block.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            problems.append(f"format_version {version!r} is not supported (this nnunet-ext reads {FORMAT_VERSION}).")

        class_names, lesion_labels = _parse_classification(block.get("classification"), dataset_json, problems)
        phases, reference = _parse_phases(block.get("phases"), dataset_json, problems)
        tab_names = _parse_tabular_header(block.get("tabular"), problems)

        raw_cases = block.get("cases", {})
        if not isinstance(raw_cases, Mapping):
            problems.append('"cases" must be an object mapping case id -> {"class", "text", "tabular"}.')
            raw_cases = {}
        cases = _parse_cases(raw_cases, class_names, tab_names, problems)

        if case_ids is not None:
            known = set(case_ids)
            unknown = sorted(set(cases) - known)
            if unknown:
                problems.append(
                    f"{len(unknown)} case id(s) in the metadata do not exist in the dataset: {_fmt_ids(unknown)}. "
                    "Fix: correct the ids (they must match the image file names without the _XXXX channel suffix) "
                    "or remove these entries.")
            if class_names:
                missing = sorted(known - set(cases))
                if missing:
                    problems.append(
                        f"{len(missing)} case(s) have no class label: {_fmt_ids(missing)}. Fix: add "
                        '"class": "<name>" for each, or "class": null to mark a case as explicitly unlabeled.')
            if tab_names:
                missing = sorted(k for k in known
                                 if not isinstance(raw_cases.get(k), Mapping) or raw_cases[k].get("tabular") is None)
                if missing:
                    problems.append(
                        f"{len(missing)} case(s) have no tabular features: {_fmt_ids(missing)}. Fix: give each case "
                        f'"tabular": [{len(tab_names)} numbers] in the order {tab_names}.')
        if problems:
            raise MetadataError("Invalid nnunet_ext metadata in dataset.json:\n  - " + "\n  - ".join(problems))
        return cls(class_names=class_names, lesion_labels=lesion_labels, phases=phases, reference_phase=reference,
                   tabular_features=tab_names, cases=cases)


# --------------------------------------------------------------------------- parsing helpers
def _fmt_ids(ids: list[str], limit: int = 20) -> str:
    # str(): nnU-Net enumerates case ids with np.unique, whose np.str_ would print as np.str_('case_000')
    shown = ", ".join(repr(str(i)) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def phase_layout(dataset_json: Mapping, metadata: DatasetMetadata | None = None) -> tuple[list[str], int]:
    """(phase names in channel order, index of the reference phase). From the ``phases`` block when there is one;
    otherwise every channel is a phase and the reference is the first channel named like portal venous
    (:data:`DEFAULT_REFERENCE_PHASES`), else channel 0."""
    if metadata is not None and metadata.phases:
        return list(metadata.phases), int(metadata.reference_phase_index)
    names = [str(dataset_json["channel_names"][k]) for k in sorted(dataset_json["channel_names"], key=int)]
    return names, next((i for i, p in enumerate(names) if p.lower() in DEFAULT_REFERENCE_PHASES), 0)


def _channel_names(dataset_json: Mapping) -> list[str]:
    """The channel names in channel order; keys that are not the channel indices 0..N-1 raise a
    :class:`MetadataError` (nnU-Net maps the keys to the files' _XXXX suffixes)."""
    key = "channel_names" if "channel_names" in dataset_json else "modality"
    ch = dataset_json.get(key, {})
    if not isinstance(ch, Mapping):
        raise MetadataError(f'dataset.json "{key}" must be an object {{"0": "CT", "1": ...}}, got '
                            f"{type(ch).__name__}. Fix: key each channel's name by its index.")
    keys = [str(k).strip() for k in ch]
    if not all(k.isdigit() for k in keys) or sorted(int(k) for k in keys) != list(range(len(keys))):
        raise MetadataError(f'dataset.json "{key}" keys must be the channel indices "0" to "{len(keys) - 1}" (the '
                            f"_0000, _0001, ... suffixes of the image files); found {list(ch)}. Fix: key each "
                            'channel by its index, e.g. {"0": "CT", "1": "CT"}, and put phase names into the '
                            "nnunet_ext phases block.")
    return [str(ch[k]) for k in sorted(ch, key=lambda x: int(str(x).strip()))]


def _parse_classification(cls_block, dataset_json, problems) -> tuple[list[str] | None, list[int] | None]:
    if cls_block is None:
        return None, None
    names = cls_block.get("class_names") if isinstance(cls_block, Mapping) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        problems.append('classification.class_names must be a non-empty list of class-name strings, e.g. '
                        '["HCC", "metastasis", "benign"].')
        return None, None
    if len(set(names)) != len(names):
        problems.append(f"classification.class_names has duplicates: {names}.")
    lesion = cls_block.get("lesion_labels")
    if lesion is not None:
        seg_labels = {int(v) for v in dataset_json.get("labels", {}).values() if not isinstance(v, (list, tuple))}
        if not isinstance(lesion, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in lesion):
            problems.append("classification.lesion_labels must be a list of integer segmentation labels.")
            lesion = None
        elif not set(lesion) <= seg_labels - {0}:
            problems.append(f"classification.lesion_labels {lesion} must be foreground labels of dataset.json "
                            f'"labels" ({sorted(seg_labels - {0})}).')
            lesion = None
    return list(names), lesion


def _parse_phases(ph_block, dataset_json, problems) -> tuple[list[str] | None, str | None]:
    if ph_block is None:
        return None, None
    order = ph_block.get("order") if isinstance(ph_block, Mapping) else None
    channels = _channel_names(dataset_json)
    if not isinstance(order, list) or not order or not all(isinstance(p, str) for p in order):
        problems.append("phases.order must be a non-empty list of phase names.")
        return None, None
    if len(order) != len(channels) or any(c != p and c.casefold() not in NORMALIZATION_CHANNEL_NAMES
                                          for c, p in zip(channels, order)):
        problems.append(f"phases.order {order} does not match channel_names {channels}. Fix: every channel is one "
                        "phase, in channel order; each channel name is either that phase's name or an nnU-Net "
                        f"normalization name ({', '.join(sorted(NORMALIZATION_CHANNEL_NAMES))}), e.g. all \"CT\".")
    reference = ph_block.get("reference")
    if reference is None:
        reference = next((p for p in order if p.lower() in DEFAULT_REFERENCE_PHASES), order[0])
    elif reference not in order:
        problems.append(f"phases.reference {reference!r} is not one of phases.order {order}.")
        reference = order[0]
    return list(order), reference


def _parse_tabular_header(tab_block, problems) -> list[str] | None:
    if tab_block is None:
        return None
    names = tab_block.get("feature_names") if isinstance(tab_block, Mapping) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        problems.append("tabular.feature_names must be a non-empty list of feature-name strings.")
        return None
    return list(names)


def _parse_cases(raw_cases: Mapping, class_names, tab_names, problems) -> dict[str, CaseRecord]:
    cases: dict[str, CaseRecord] = {}
    bad_class, no_class, bad_text, bad_tab, bad_entry = [], [], [], [], []
    for case_id, entry in raw_cases.items():
        if not isinstance(entry, Mapping):
            bad_entry.append(case_id)
            continue
        class_index = None
        if class_names is not None:
            if "class" not in entry:
                no_class.append(case_id)
            else:
                class_index = _class_index(entry["class"], class_names)
                if class_index is _INVALID:
                    bad_class.append(f"{str(case_id)!r} ({entry['class']!r})")
                    class_index = None
        elif entry.get("class") is not None:
            bad_class.append(f"{str(case_id)!r} ({entry['class']!r}, but no classification.class_names are "
                             "declared)")
        text = entry.get("text")
        if text is not None and not isinstance(text, str):
            bad_text.append(f"{str(case_id)!r} ({type(text).__name__})")
            text = None
        tab = None
        if "tabular" in entry and entry["tabular"] is not None:
            tab, why = _tabular_vector(entry["tabular"], tab_names)
            if why:
                bad_tab.append(f"{str(case_id)!r} ({why})")
        cases[str(case_id)] = CaseRecord(class_index=class_index, text=text, tabular=tab)
    if bad_entry:
        problems.append(f"case entries must be objects: {_fmt_ids(bad_entry)}.")
    if no_class:
        problems.append(f"{len(no_class)} case(s) have no class label: {_fmt_ids(sorted(no_class))}. Fix: add "
                        '"class": "<name>" for each, or "class": null to mark a case as explicitly unlabeled.')
    if bad_class:
        problems.append(f"class labels outside the class list {class_names}: {', '.join(bad_class)}. Fix: use one "
                        "of the class names (or its 0-based index), or null for unlabeled.")
    if bad_text:
        problems.append(f"texts must be strings: {', '.join(bad_text)}.")
    if bad_tab:
        problems.append(f"invalid tabular values: {', '.join(bad_tab)}. Fix: give {len(tab_names or [])} finite "
                        "numbers per case (impute missing values, e.g. with the training median, before conversion).")
    return cases


_INVALID = object()


def _class_index(value, class_names: list[str]):
    if value is None:
        return None
    if isinstance(value, bool):
        return _INVALID
    if isinstance(value, int):
        return value if 0 <= value < len(class_names) else _INVALID
    if isinstance(value, str) and value in class_names:
        return class_names.index(value)
    return _INVALID


def _tabular_vector(values, tab_names) -> tuple[tuple[float, ...] | None, str | None]:
    if tab_names is None:
        return None, "no tabular.feature_names declared"
    if not isinstance(values, (list, tuple)):
        return None, f"expected a list, got {type(values).__name__}"
    if len(values) != len(tab_names):
        return None, f"{len(values)} values for {len(tab_names)} features {tab_names}"
    out = []
    for name, v in zip(tab_names, values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None, f"{name}={v!r} is not numeric"
        if not math.isfinite(float(v)):
            return None, f"{name}={v!r} is not finite"
        out.append(float(v))
    return tuple(out), None


# --------------------------------------------------------------------------- files
def load_dataset_json(path: str) -> dict:
    """Load a ``dataset.json``, raising a clear error for a missing or corrupt file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise MetadataError(f"{path} does not exist.") from e
    except json.JSONDecodeError as e:
        raise MetadataError(f"{path} is not valid JSON ({e}). Fix the file (a stray comma?) and retry.") from e


def save_json_atomic(obj: Any, path: str) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so a crash never leaves a half-written file. The
    file gets the mode a plain ``open`` would give it (the umask, or the replaced file's mode)."""
    from nnunet_ext.data.files import match_open_mode

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
        match_open_mode(tmp, path)  # mkstemp's 0600 would make the file private on shared storage
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_metadata(dataset_json_path: str, metadata: DatasetMetadata) -> dict:
    """Validate ``metadata`` against the ``dataset.json`` at ``dataset_json_path`` and store it there atomically."""
    dj = load_dataset_json(dataset_json_path)
    dj[METADATA_KEY] = metadata.to_json()
    DatasetMetadata.from_dataset_json(dj)  # raises on anything inconsistent with channel_names / labels
    save_json_atomic(dj, dataset_json_path)
    return dj


def raw_case_ids(raw_dataset_folder: str, dataset_json: Mapping | None = None) -> list[str]:
    """Case identifiers of the training cases of a raw nnU-Net dataset, as nnU-Net itself enumerates them."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    dj = dict(dataset_json) if dataset_json is not None else load_dataset_json(
        os.path.join(raw_dataset_folder, "dataset.json"))
    return sorted(get_filenames_of_train_images_and_targets(raw_dataset_folder, dj).keys())


def validate_raw_dataset(raw_dataset_folder: str) -> DatasetMetadata | None:
    """Validate the metadata of a raw dataset folder against the cases that exist in it."""
    dj = load_dataset_json(os.path.join(raw_dataset_folder, "dataset.json"))
    return DatasetMetadata.from_dataset_json(dj, raw_case_ids(raw_dataset_folder, dj))
