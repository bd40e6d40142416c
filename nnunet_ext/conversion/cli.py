"""``nnunet-ext convert <name>``: every converter module registers its own sub-subcommand."""

from __future__ import annotations

import importlib

CONVERTER_MODULES = (
    "nnunet_ext.conversion.synthetic",
    "nnunet_ext.conversion.synthetic_referring",
    "nnunet_ext.conversion.lits",
    "nnunet_ext.conversion.msd",
    "nnunet_ext.conversion.nnunet_v1",
    "nnunet_ext.conversion.dicom_multiphase",
    "nnunet_ext.conversion.ircadb",
    "nnunet_ext.conversion.mri_classification",
    "nnunet_ext.conversion.reference_phase",
)


def add_parser(sub) -> None:
    convert = sub.add_parser("convert", help="convert a dataset (or generate a synthetic one) to nnU-Net v2")
    convert_sub = convert.add_subparsers(dest="converter", required=True)
    for name in CONVERTER_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.add_parser(convert_sub)
