"""Case-level inputs of a network, looked up by case id: one module for the trainer's batches, its final validation
and ``nnunet-ext predict``.

What travels (:data:`~nnunet_ext.architectures.contract.CASE_INPUT_KWARGS`):

* ``class_target``: the class index of each case (-1: unlabeled), for the loss, not the network;
* ``tabular`` (B, F) float32: the raw feature values from the metadata (training) or ``--tabular`` (prediction);
  networks standardise them with the training fold's statistics (:meth:`CaseInputs.tabular_statistics`), which
  they keep as buffers;
* ``text`` (B, T, D) float32 and ``text_mask`` (B, T) bool: token embeddings of the case's text by the frozen
  encoder recorded in the plans, computed once at ``plan-and-preprocess`` (training) or when ``predict`` starts
  (:mod:`nnunet_ext.data.text_embeddings`). A case without text (allowed only for networks that declare ``text``
  optional) gets zero tokens and an all-False mask, which such networks read as "no text".

nnU-Net's batches carry the case ids (``batch["keys"]``), so the lookup happens in the trainer's step, after the
data loader and its augmentation workers: nothing is added to nnU-Net's loaders.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from nnunet_ext.data.metadata import UNLABELED, DatasetMetadata, _fmt_ids
from nnunet_ext.errors import NnunetExtError


class CaseInputError(NnunetExtError, ValueError):
    """A case lacks an input its network needs, or the input is malformed; the message names the case and the fix."""


class CaseInputs:
    """Lookup tables from case id to class index, tabular vector and text embedding; small and picklable.

    Args:
        class_index: {case: class index or -1}.
        tabular: {case: (F,) float32}.
        text: {case: ((T, D) float32 tokens, (T,) bool mask)}.
        num_tabular: F (for the error messages and empty batches).
    """

    def __init__(self, class_index: Mapping[str, int] | None = None,
                 tabular: Mapping[str, np.ndarray] | None = None,
                 text: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None, num_tabular: int = 0):
        self.class_index = dict(class_index or {})
        self.tabular = {k: np.asarray(v, dtype=np.float32) for k, v in (tabular or {}).items()}
        self.text = dict(text or {})
        self.num_tabular = int(num_tabular)

    @classmethod
    def from_metadata(cls, metadata: DatasetMetadata | None, case_ids: Sequence[str],
                      text: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> CaseInputs:
        """The training-side tables of ``case_ids`` from validated metadata (and precomputed text embeddings)."""
        if metadata is None:
            return cls(text=text)
        ids = [str(k) for k in case_ids]
        class_index = dict(zip(ids, metadata.class_targets(ids).tolist())) if metadata.has_classification else {}
        tabular = {k: metadata.cases[k].tabular for k in ids
                   if k in metadata.cases and metadata.cases[k].tabular is not None}
        return cls(class_index, tabular, text, metadata.num_tabular)

    # ------------------------------------------------------------------ checks
    def check(self, case_ids: Sequence[str], needs: Sequence[str], where: str, optional: Sequence[str] = ()) -> None:
        """Raise :class:`CaseInputError` naming every case of ``case_ids`` that lacks an input in ``needs`` (inputs in
        ``optional`` may be missing); ``where`` says which data the ids came from, for the fix."""
        problems = []
        for name in needs:
            if name in optional:
                continue
            table = {"tabular": self.tabular, "text": self.text}[name]
            missing = [k for k in case_ids if k not in table]
            if missing:
                fix = {"tabular": f'give each case "tabular": [{self.num_tabular} numbers] ({where})',
                       "text": f'give each case a text ({where})'}[name]
                problems.append(f"{len(missing)} case(s) have no {name} input: {_fmt_ids(missing)}. Fix: {fix}.")
        if problems:
            raise CaseInputError("The network needs case inputs that are missing:\n  - " + "\n  - ".join(problems))

    # ------------------------------------------------------------------ batches
    def class_targets(self, keys: Sequence[str]) -> torch.Tensor:
        """(B,) int64 class indices, -1 for unlabeled or unknown cases."""
        return torch.tensor([self.class_index.get(str(k), UNLABELED) for k in keys], dtype=torch.long)

    def batch(self, keys: Sequence[str], uses: Sequence[str], device: torch.device | str | None = None
              ) -> dict[str, torch.Tensor]:
        """The ``forward`` keyword arguments for the cases ``keys`` (in order) and the inputs ``uses``. Without any
        text embedding in the table the text arguments are left out (the network's "no text" path)."""
        out: dict[str, torch.Tensor] = {}
        keys = [str(k) for k in keys]
        if "tabular" in uses:
            out["tabular"] = torch.from_numpy(np.stack([self.tabular[k] for k in keys]))
        shape = next((t.shape for t, _ in self.text.values()), None)
        if "text" in uses and shape is not None:  # no text at all: the network's own "no text" path (text=None)
            tokens, masks = [], []
            for k in keys:
                if k in self.text:
                    t, m = self.text[k]
                    tokens.append(np.asarray(t, dtype=np.float32))
                    masks.append(np.asarray(m, dtype=bool))
                else:  # a case without text: zero tokens, nothing attended ("no text")
                    tokens.append(np.zeros(shape, dtype=np.float32))
                    masks.append(np.zeros(shape[0], dtype=bool))
            out["text"] = torch.from_numpy(np.stack(tokens))
            out["text_mask"] = torch.from_numpy(np.stack(masks))
        if device is not None:
            out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        return out

    def tabular_statistics(self, case_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (population) standard deviation of the tabular features over ``case_ids`` (the training fold)."""
        rows = [self.tabular[str(k)] for k in case_ids if str(k) in self.tabular]
        if not rows:
            raise CaseInputError("no training case has tabular features: no statistics to standardise with")
        mat = np.stack(rows).astype(np.float64)
        return mat.mean(0).astype(np.float32), mat.std(0).astype(np.float32)


# --------------------------------------------------------------------------- prediction-time tables
def _read_table(path: str) -> tuple[str, object]:
    if not os.path.isfile(path):
        raise CaseInputError(f"{path} does not exist. Fix: pass a CSV or JSON file keyed by case id.")
    if path.lower().endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise CaseInputError(f"{path} is not valid JSON ({e}). Fix the file and retry.") from e
        if not isinstance(data, dict):
            raise CaseInputError(f"{path}: expected a JSON object keyed by case id, got {type(data).__name__}.")
        return "json", data
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "case_id" not in rows[0]:
        raise CaseInputError(f"{path}: expected a CSV with a header row whose first column is case_id.")
    return "csv", rows


def read_texts(path: str) -> dict[str, str]:
    """``--texts``: a JSON object ``{case_id: text}`` or a CSV with columns ``case_id,text``. Empty texts are kept
    here and refused by the caller with the cases named."""
    kind, data = _read_table(path)
    if kind == "json":
        bad = [k for k, v in data.items() if not isinstance(v, str)]
        if bad:
            raise CaseInputError(f"{path}: texts must be strings; not for {_fmt_ids(bad)}.")
        return {str(k): v for k, v in data.items()}
    if "text" not in data[0]:
        raise CaseInputError(f"{path}: the CSV needs the columns case_id,text.")
    return {row["case_id"]: row["text"] or "" for row in data}


def read_tabular(path: str, feature_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``--tabular``: a CSV with ``case_id`` and one column per feature (by name, any order), or a JSON object
    ``{case_id: [values in feature order]}`` / ``{case_id: {feature: value}}``. Every value finite."""
    kind, data = _read_table(path)
    names = list(feature_names)
    if kind == "csv":
        absent = [n for n in names if n not in data[0]]
        if absent:
            raise CaseInputError(f"{path}: the model's tabular features {names} need CSV columns; missing: {absent}. "
                                 "Fix: add a column per feature, named as in training.")
        entries = {row["case_id"]: [row[n] for n in names] for row in data}
    else:
        entries = {}
        for k, v in data.items():
            entries[str(k)] = [v.get(n) for n in names] if isinstance(v, dict) else v
    out, problems = {}, []
    for case, values in entries.items():
        if not isinstance(values, (list, tuple)) or len(values) != len(names):
            n = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            problems.append(f"{case!r}: {n} values for the {len(names)} features {names}")
            continue
        try:
            vec = np.array([float(x) for x in values], dtype=np.float32)
        except (TypeError, ValueError):
            problems.append(f"{case!r}: non-numeric value in {list(values)}")
            continue
        if not all(math.isfinite(float(x)) for x in vec):
            problems.append(f"{case!r}: non-finite value in {list(values)}")
            continue
        out[case] = vec
    if problems:
        raise CaseInputError(f"{path}: invalid tabular rows: " + "; ".join(problems[:10])
                             + f". Fix: give {len(names)} finite numbers per case, in the order {names} (impute "
                             "missing values as for training).")
    return out
