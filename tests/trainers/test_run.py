"""``nnunet-ext train`` refuses to start from scratch over a fold that already holds a checkpoint."""

from __future__ import annotations

import pytest

from nnunet_ext.trainers.run import ExistingTrainingError, train


@pytest.mark.parametrize("checkpoint, state", [("checkpoint_final.pth", "a finished training"),
                                               ("checkpoint_latest.pth", "an unfinished training")])
def test_training_from_scratch_never_overwrites_a_checkpoint(tiny_multiphase, checkpoint, state):
    fold = tiny_multiphase["results"] / "EarlyFusionTrainer_smoke__nnUNetPlans__3d_fullres" / "fold_all"
    fold.mkdir(parents=True, exist_ok=True)
    (fold / checkpoint).write_bytes(b"weights of a week of training")
    try:
        with pytest.raises(ExistingTrainingError, match=f"already holds {state}") as e:
            train(str(tiny_multiphase["id"]), "3d_fullres", "all", "EarlyFusionTrainer_smoke", device="cpu")
        assert "--c" in str(e.value) and "Fix:" in str(e.value)
        assert (fold / checkpoint).read_bytes() == b"weights of a week of training"
    finally:
        (fold / checkpoint).unlink()
