"""Conversions that run at the same time or were killed: the target checks are repeated under the dataset id's lock
at the rename (a second conversion cannot silently replace the first or give one id two folders), and staging
folders of killed conversions are removed when the next conversion of that id starts. The same for the synthetic
generators."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from nnunet_ext.conversion.common import ConversionError, ConversionJob, staging_prefix


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _job(root, source, name="A", **options):
    return ConversionJob("test", 941, name, root, False, [source], source.parent, options)


def _build(marker):
    def build(stage):
        from nnunet_ext.data.metadata import save_json_atomic

        (stage.folder / "imagesTs").mkdir()
        (stage.folder / "imagesTs" / "x_0000.nii.gz").write_text(marker)
        stage.test_cases.append("x")
        save_json_atomic({"channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": 0,
                          "file_ending": ".nii.gz", "marker": marker}, str(stage.folder / "dataset.json"))
    return build


@pytest.fixture
def source(tmp_path):
    f = tmp_path / "src" / "input.txt"
    f.parent.mkdir()
    f.write_text("input")
    return f


def test_a_conversion_finishing_first_is_not_replaced_by_a_later_rename(tmp_path, source):
    """The second conversion runs entirely while the first one builds (the first one's checks passed before): the
    first must not rename its build over the second's dataset."""
    root = tmp_path / "raw"
    second = _job(root, source, p=2)

    def slow_first(stage):
        second.run(_build("second"))  # finishes while the first one is still building
        _build("first")(stage)

    with pytest.raises(ConversionError, match=r"Dataset941_A already exists \(written by another conversion while "
                                              r"this one ran\) and holds a different dataset \(it was converted with "
                                              r"other options: p=2 \(now 1\)\)\. Nothing was changed"):
        _job(root, source, p=1).run(slow_first)
    assert json.loads((root / "Dataset941_A" / "dataset.json").read_text())["marker"] == "second"
    assert not list(root.glob(".nnunet_ext_partial-*"))


def test_two_names_for_one_id_at_the_same_time_are_refused(tmp_path, source):
    root = tmp_path / "raw"

    def slow_first(stage):
        _job(root, source, name="B", p=1).run(_build("B"))
        _build("A")(stage)

    with pytest.raises(ConversionError, match=r"dataset id 941 is already used by .*Dataset941_B \(written by another "
                                              r"conversion while this one ran\)"):
        _job(root, source, name="A", p=1).run(slow_first)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["Dataset941_B"]


def test_an_identical_conversion_finishing_first_is_kept(tmp_path, source, capsys):
    root = tmp_path / "raw"

    def slow_first(stage):
        _job(root, source, p=1).run(_build("same"))
        _build("same")(stage)

    res = _job(root, source, p=1).run(slow_first)
    assert res.already_converted and "already converted" in capsys.readouterr().out


def test_staging_folders_of_killed_conversions_are_removed(tmp_path, source, capsys):
    root = tmp_path / "raw"
    root.mkdir()
    killed = root / (staging_prefix("Dataset941_A").rsplit("-", 2)[0] + f"-{_dead_pid()}-abc")
    (killed / "Dataset941_A" / "imagesTr").mkdir(parents=True)
    (killed / "Dataset941_A" / "imagesTr" / "big_0000.nii.gz").write_bytes(b"0" * 4096)
    running = root / (staging_prefix("Dataset941_A") + "xyz")  # this process: still building
    running.mkdir()
    other_id = root / (staging_prefix("Dataset942_A").rsplit("-", 2)[0] + f"-{_dead_pid()}-abc")
    other_id.mkdir()
    _job(root, source, p=1).run(_build("x"))
    assert not killed.exists() and running.exists() and other_id.exists()
    assert f"removed {killed}" in capsys.readouterr().out


def test_synthetic_generator_rechecks_at_the_rename_and_cleans_up(tmp_path, capsys):
    from nnunet_ext.conversion.synthetic import SyntheticDataError, write_dataset

    root = tmp_path / "raw"
    root.mkdir()
    killed = root / (staging_prefix("Dataset955_S", ".tmp_").rsplit("-", 2)[0] + f"-{_dead_pid()}-abc")
    killed.mkdir()

    def cases(params):
        def write(folder):
            return {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 0,
                    "file_ending": ".nii.gz", "name": "S", "params": params}, {}
        return write

    def slow(folder):
        write_dataset(955, "S", str(root), {"p": 2}, False, cases(2))  # another run finishes first
        return cases(1)(folder)

    with pytest.raises(SyntheticDataError, match=r"Dataset955_S exists \(written by another run while this one ran\) "
                                                 r"and differs"):
        write_dataset(955, "S", str(root), {"p": 1}, False, slow)
    assert json.loads((root / "Dataset955_S" / "dataset.json").read_text())["params"] == 2
    assert not killed.exists() and f"removed {killed}" in capsys.readouterr().out
    old = os.umask(0o022)
    try:
        folder = write_dataset(956, "T", str(root), {"p": 1}, False, cases(1))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755  # not mkdtemp's private 0700
    assert stat.S_IMODE(os.stat(os.path.join(folder, "dataset.json")).st_mode) == 0o644
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp_")]
