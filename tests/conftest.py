"""Shared fixtures. nnU-Net reads its folders from environment variables at call time, so one set of
folders serves every test; each test module uses its own dataset ids (see ``DATASET_IDS``)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"

# dataset-id ranges per test area, so parallel-developed tests never collide in the shared nnU-Net folders
DATASET_IDS = {"foundation": range(900, 920), "conversion": range(920, 950), "synthetic": range(950, 970),
               "evaluation": range(970, 990), "stdnet": range(990, 1000), "examples": range(880, 900),
               "desamba": range(860, 880)}

# Files that take minutes on the 2-core CI machine, longest first. `make test` runs the suite on two pytest-xdist
# workers, one file per work unit, in collection order (`-n 2 --dist loadfile --no-loadscope-reorder`); collecting
# these first is meant to keep a one-thread worker from running them alone at the end while the other one idles
# (with two threads per worker the order made no measurable difference: 746 s against 748 s; not measured apart
# from the one-thread change).
LONGEST_FILES = ("test_stock_roundtrip.py", "examples/test_examples.py", "trainers/test_stdnet_trainers.py",
                 "trainers/test_seeding.py", "trainers/test_ddp.py",
                 "evaluation/test_cli_end_to_end.py", "planners/test_stdnet_planner.py", "trainers/test_pretraining.py",
                 "trainers/test_desamba_trainers.py", "benchmarks/test_stdnet_learning_check.py")

# under pytest-xdist each of the two workers gets one core: one torch thread in the worker and in its subprocesses
XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ
NNUNET_TEST_ENV = {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "f",
                   "OMP_NUM_THREADS": "1" if XDIST_WORKER else "2", "MPLBACKEND": "agg"}


def pytest_collection_modifyitems(config, items):
    """The files of :data:`LONGEST_FILES` first, in that order; every other file, and the tests within each file,
    keep pytest's order (a stable sort)."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}

    def file_rank(item) -> int:
        path = Path(str(item.path)).resolve()
        rel = path.relative_to(REPO / "tests").as_posix() if path.is_relative_to(REPO / "tests") else ""
        return rank.get(rel, len(LONGEST_FILES))

    items.sort(key=file_rank)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_xdist_worker():
    """Two workers with two threads each oversubscribe the 2-core machine (measured on the same suite: 746 s wall,
    14.9 min user time; with one thread each 683 s, 12.3 min; in one process with two threads 893 s, 11.8 min)."""
    if not XDIST_WORKER:
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def _worker_pools_fork_from_a_server():
    """nnU-Net starts every worker pool with the "spawn" method (fingerprint, preprocessing, the export at the end of
    training and in prediction), so each pool pays a fresh interpreter's import of torch: ~4 s on the 2-core CI
    machine, once per fingerprint, preprocessing run, validation and prediction of every test. In the tests those
    pools use "forkserver" instead, with torch imported once in the server. The contract the workers see is spawn's
    (arguments and results are pickled; a child inherits nothing of the parent's state but the preloaded third-party
    modules); nnU-Net is not preloaded, since it reads its folders from the environment at import. Console scripts
    that tests run as subprocesses (``nnUNetv2_train``, ``nnunet-ext``) keep nnU-Net's spawn pools, so that path
    stays covered."""
    original = multiprocessing.get_context
    original("forkserver").set_forkserver_preload(["torch", "numpy", "scipy.ndimage", "SimpleITK"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(multiprocessing, "get_context", lambda method=None: original(
            "forkserver" if method == "spawn" else method))
        yield


@pytest.fixture(scope="session", autouse=True)
def _fewer_fingerprint_intensity_samples():
    """nnU-Net's fingerprint samples 1e8 foreground intensities per channel whatever the dataset's size (for a tiny
    3-channel test dataset: 3e8 values drawn with replacement, pickled back from the workers as ~200 MB per case and
    sorted for the percentiles: ~30 s per fingerprint on the CI machine). In-process fingerprints in the tests draw
    1e6 (the sampling is seeded, so they stay deterministic); on the stock round trip's 6 cases that moves the mean and
    std by < 0.2% and the 0.5/99.5 percentiles by < 0.5 intensity units. The stock console scripts that tests run as
    subprocesses keep nnU-Net's 1e8."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    original = DatasetFingerprintExtractor.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.num_foreground_voxels_for_intensitystats = 1e6

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DatasetFingerprintExtractor, "__init__", __init__)
        yield


@pytest.fixture(scope="module")
def single_torch_thread():
    """One torch thread for a module of tiny-tensor tests (``pytestmark = pytest.mark.usefixtures(...)``): tiny
    tensors gain nothing from threads, and OpenMP threads spinning on a busy shared CPU cost 100x."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data/real``: small real CT/MRI/DICOM files (read-only; copy before writing)."""
    assert REAL_DATA.is_dir(), f"real test data not found at {REAL_DATA}"
    return REAL_DATA


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory):
    """One nnUNet_raw / nnUNet_preprocessed / nnUNet_results and CPU-friendly nnU-Net settings for the test run."""
    from nnunet_ext.paths import trainer_discovery_path

    root = tmp_path_factory.mktemp("nnunet")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnUNet_extTrainer": trainer_discovery_path(),
           **NNUNET_TEST_ENV}
    for k in ("raw", "preprocessed", "results"):
        (root / k).mkdir()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {k: Path(v) for k, v in env.items() if k.startswith("nnUNet_") and k != "nnUNet_extTrainer"}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_multiphase(nnunet_dirs):
    """Dataset900: 10 tiny 3-phase cases (16x32x32, one unlabeled), planned and preprocessed (3d_fullres) with
    nnU-Net's default planner. Returns its id, name and folders. Treat it as read-only."""
    from nnunet_ext.data.fixtures import make_tiny_multiphase_dataset
    from nnunet_ext.planners.api import plan_and_preprocess

    raw = make_tiny_multiphase_dataset(str(nnunet_dirs["nnUNet_raw"]), 900, n_cases=10, n_unlabeled=1)
    plan_and_preprocess(900, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    name = os.path.basename(raw)
    return {"id": 900, "name": name, "raw": Path(raw), "preprocessed": nnunet_dirs["nnUNet_preprocessed"] / name,
            "results": nnunet_dirs["nnUNet_results"] / name}


@pytest.fixture
def copy_of(tmp_path):
    """Copy a file or folder into this test's tmp dir: ``copy_of(real_data / 'ct_abdomen')``."""

    def _copy(src: Path) -> Path:
        dst = tmp_path / Path(src).name
        if Path(src).is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        return dst

    return _copy
