"""Checks of prediction inputs before any case runs: channels, files, grids, finite values, the device."""

from __future__ import annotations

import os

import torch

from nnunet_ext.data.integrity import channel_files
from nnunet_ext.errors import NnunetExtError


class InputError(NnunetExtError, ValueError):
    """Bad prediction input; the message names the case and the fix."""


def check_input_folder(input_folder: str, dataset_json: dict) -> list[str]:
    """Check that every case in ``input_folder`` has exactly the model's channels; returns the case ids."""
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    if not os.path.isdir(input_folder):
        raise InputError(f"input folder {input_folder} does not exist")
    files, strays = channel_files(input_folder, ending)
    channels = {case: set(found) for case, found in files.items()}
    if strays:
        raise InputError(f"{input_folder}: files without the _XXXX channel suffix: {strays[:5]}. Fix: name images "
                         f"CASE_0000{ending}, CASE_0001{ending}, ... (one file per channel).")
    if not channels:
        raise InputError(f"{input_folder} holds no {ending} images named CASE_XXXX{ending}.")
    expected = set(range(n_channels))
    bad = {k: sorted(v) for k, v in channels.items() if v != expected}
    if bad:
        names = [dataset_json["channel_names"][str(i)] for i in range(n_channels)]
        desc = "; ".join(f"{k}: channels {v}" for k, v in list(bad.items())[:10])
        raise InputError(f"the model expects {n_channels} channel(s) {names} (files _0000.._{n_channels - 1:04d}), "
                         f"but {len(bad)} case(s) differ: {desc}. Fix: provide exactly these channels per case, in "
                         "the training order.")
    for case in sorted(channels):
        check_case_files([os.path.join(input_folder, f"{case}_{c:04d}{ending}") for c in range(n_channels)], case,
                         [dataset_json["channel_names"][str(c)] for c in range(n_channels)])
    return sorted(channels)


def require_finite(data: torch.Tensor, case: str) -> None:
    """Preprocessed data of ``case`` holds no NaN or infinity, or an error naming the case and the fix."""
    if not torch.isfinite(data).all():
        raise InputError(f"case {case} contains NaN or infinite values after preprocessing. Fix: replace them in the "
                         "input image(s) (e.g. with the image minimum).")


def torch_device(device: str) -> torch.device:
    """``-device`` as a torch device; asking for CUDA on a machine without it is an error with the fix (the check
    ``nnunet-ext train`` runs too: :func:`nnunet_ext.trainers.run.torch_device`)."""
    from nnunet_ext.trainers.run import torch_device as checked_device

    return checked_device(device)


def check_case_files(files: list[str], case: str, names: list[str]) -> None:
    """Every channel file of one case whole and finite (:func:`~nnunet_ext.data.integrity.check_image_file`), and
    all on one voxel grid: nnU-Net only warns about channels whose origins differ and then predicts with the phases
    misaligned; with other sizes or spacings its workers die with an unrelated message."""
    from nnunet_ext.data.geometry import header_mismatch, image_header
    from nnunet_ext.data.integrity import check_image_file

    for f, name in zip(files, names):
        check_image_file(f, case, f"channel {name!r}")
    headers = [image_header(f, case, f"channel {name!r}") for f, name in zip(files, names)]
    for f, name, h in zip(files[1:], names[1:], headers[1:]):
        diff = header_mismatch(headers[0], h)
        if diff:
            raise InputError(f"case {case!r}: channel {name!r} ({os.path.basename(f)}) is not on the voxel grid of "
                             f"channel {names[0]!r} ({diff}). nnU-Net would predict with the channels misaligned. "
                             "Fix: register and resample every phase onto the reference phase's grid (nnunet-ext "
                             "convert dicom-multiphase does this), then rerun.")
