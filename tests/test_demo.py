"""``nnunet-ext demo --fresh`` deletes demo workspaces only."""

from __future__ import annotations

import pytest

from nnunet_ext.demo import DEMO_MARKER, remove_demo_workspace
from nnunet_ext.errors import NnunetExtError


def test_fresh_deletes_a_demo_workspace_or_an_empty_folder_but_nothing_else(tmp_path):
    thesis = tmp_path / "my_project"
    thesis.mkdir()
    (thesis / "thesis.txt").write_text("three years", encoding="utf-8")
    with pytest.raises(NnunetExtError, match="not a demo workspace"):
        remove_demo_workspace(str(thesis))
    assert (thesis / "thesis.txt").read_text(encoding="utf-8") == "three years"

    demo = tmp_path / "demo_output"
    (demo / "nnUNet_raw").mkdir(parents=True)
    (demo / DEMO_MARKER).touch()
    remove_demo_workspace(str(demo))
    assert not demo.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    remove_demo_workspace(str(empty))
    assert not empty.exists()


def test_the_demo_runs_end_to_end_and_prints_held_out_probabilities(tmp_path, monkeypatch, capsys):
    """The code of ``make demo`` (generate, plan, train both methods with the stock trainer, predict, attention,
    benchmark, table) on the 'smoke' schedule; ``make demo`` itself trains 600 iterations (benchmarks/RESULTS.md)."""
    import os

    from nnunet_ext.demo import DemoConfig, run_demo

    env = dict(os.environ)
    try:
        monkeypatch.setenv("nnUNet_n_proc_DA", "0")
        out = run_demo(DemoConfig(output=str(tmp_path / "demo"), device="cpu", n_train=10, n_test=3,
                                  shape=(16, 32, 32), schedule="smoke"))
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert list(out["heldout"]) == ["EarlyFusionTrainer_smoke", "STDNetTrainer_smoke"]
    for h in out["heldout"].values():
        assert h["n"] == 3 and len(h["probabilities"]) == 3 and h["class_names"]
        assert all(len(p) == len(h["class_names"]) and abs(sum(p) - 1) < 1e-3 for p in h["probabilities"].values())
        assert h["probability_spread"] >= 0 and 0 <= h["lesion_dice"] <= 1
    table = capsys.readouterr().out
    assert "SHORT SCHEDULE: 1 epochs x 2 iterations" in table and "p spread" in table
    assert "STDNetTrainer_smoke: held-out class probabilities" in table
    assert os.path.isfile(os.path.join(out["benchmark"].output_folder, "report.md"))
    assert (tmp_path / "demo" / "attention_heldout" / "phase_attention.csv").is_file()
