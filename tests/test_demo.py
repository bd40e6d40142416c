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
