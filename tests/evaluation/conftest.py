"""Real tiny trained models shared by the evaluation tests: EarlyFusionTrainer_smoke (with a class head) and
nnUNetTrainer_smoke (vanilla nnU-Net), fold 4 of the test run's ``tiny_multiphase`` dataset."""

from __future__ import annotations

import pytest

SMOKE_FOLD = "4"  # other test modules train folds 0-3 of the shared tiny dataset
SMOKE_TRAINERS = ("EarlyFusionTrainer_smoke", "nnUNetTrainer_smoke")


@pytest.fixture(scope="session")
def smoke_models(tiny_multiphase):
    """Train (or reuse, when this test run already has them) one fold of both smoke trainers on CPU."""
    from nnunet_ext.trainers.run import train

    folders = {}
    for trainer in SMOKE_TRAINERS:
        folder = tiny_multiphase["results"] / f"{trainer}__nnUNetPlans__3d_fullres"
        fold = folder / f"fold_{SMOKE_FOLD}"
        if not ((fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()):
            train(str(tiny_multiphase["id"]), "3d_fullres", SMOKE_FOLD, trainer, device="cpu")
        folders[trainer] = folder
    return {"dataset": tiny_multiphase, "folders": folders, "fold": int(SMOKE_FOLD)}
