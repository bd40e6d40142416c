"""Small building blocks shared by ``nnunet-ext demo`` and the scripts in ``examples/``: a self-contained nnU-Net
workspace, training that skips finished folds and resumes interrupted ones, and quiet logging of nnU-Net's prints."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings


def use_workspace(root: str, overwrite_env: bool = True) -> dict[str, str]:
    """Point ``nnUNet_raw/preprocessed/results`` at ``root/nnUNet_*`` (created) and put nnunet-ext's trainers on
    nnU-Net's search path. With ``overwrite_env=False`` variables the user already exported are kept."""
    from nnunet_ext.paths import ensure_trainer_path

    root = os.path.abspath(root)
    env = {}
    for name in ("raw", "preprocessed", "results"):
        key = f"nnUNet_{name}"
        if overwrite_env or key not in os.environ:
            os.environ[key] = os.path.join(root, key)
        env[key] = os.environ[key]
        os.makedirs(env[key], exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "agg")
    # timm (imported by dynamic-network-architectures) uses torch.jit.interface; the deprecation is not ours to fix
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)
    ensure_trainer_path()
    return env


def cpu_friendly_processes(device: str) -> None:
    """On a CPU, keep nnU-Net from starting more worker processes than there are cores."""
    cpus = os.cpu_count() or 1
    os.environ.setdefault("nnUNet_def_n_proc", str(min(2, cpus)))
    if device == "cpu":
        os.environ.setdefault("nnUNet_n_proc_DA", "0" if cpus <= 2 else str(min(4, cpus - 1)))


def model_folder(dataset_name: str, trainer: str, plans: str, configuration: str = "3d_fullres") -> str:
    from nnunetv2.paths import nnUNet_results

    return os.path.join(nnUNet_results.get(), dataset_name, f"{trainer}__{plans}__{configuration}")


def train_if_needed(dataset_name: str, configuration: str, fold, trainer: str, plans: str, device: str,
                    log_path: str | None = None) -> str:
    """Train one fold with nnU-Net's own entry point unless ``checkpoint_final.pth`` exists; an interrupted run
    (a fold folder with a checkpoint) is continued (``--c``). Returns the fold folder."""
    from nnunet_ext.trainers.run import train

    folder, done, resume = _fold_state(dataset_name, trainer, plans, configuration, fold)
    if done:
        return folder
    print(f"    {trainer} ({plans}) fold {fold}{': resuming' if resume else ''}", file=sys.stderr, flush=True)
    with quiet(log_path):
        train(dataset_name, configuration, str(fold), trainer, plans, device=device, continue_training=resume)
    return folder


def _fold_state(dataset_name: str, trainer: str, plans: str, configuration: str, fold) -> tuple[str, bool, bool]:
    """(fold folder, finished: ``checkpoint_final.pth`` exists (said on stderr), interrupted: a latest checkpoint)."""
    folder = os.path.join(model_folder(dataset_name, trainer, plans, configuration), f"fold_{fold}")
    if os.path.isfile(os.path.join(folder, "checkpoint_final.pth")):
        print(f"    {trainer} fold {fold}: already trained ({folder})", file=sys.stderr)
        return folder, True, False
    return folder, False, os.path.isfile(os.path.join(folder, "checkpoint_latest.pth"))


@contextlib.contextmanager
def quiet(log_path: str | None):
    """Send nnU-Net's prints (stdout) to ``log_path`` (appending); progress bars (stderr) stay on the terminal."""
    if log_path is None:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        yield


def stage(msg: str) -> None:
    print(f"\n==> {msg}", file=sys.stderr, flush=True)


def stdnet_planner_for(device: str) -> tuple[str, str]:
    """(planner, plans name) for STD-Net: the paper's temporal modeler on a GPU, the reduced CPU preset otherwise."""
    return ("STDNetPlannerCPU", "STDNetPlansCPU") if device == "cpu" else ("STDNetPlanner", "STDNetPlans")


def plan_vanilla_and_stdnet(dataset_id: int, device: str, log_path: str | None = None,
                            configuration: str = "3d_fullres") -> str:
    """Plan and preprocess with nnU-Net's default planner, then with the STD-Net planner (which reuses the vanilla
    data folder). Returns the STD-Net plans name."""
    from nnunetv2.configuration import default_num_processes

    from nnunet_ext.planners.api import plan_and_preprocess

    planner, plans = stdnet_planner_for(device)
    n = max(1, min(int(default_num_processes), os.cpu_count() or 1))
    with quiet(log_path):
        plan_and_preprocess(dataset_id, "ExperimentPlanner", (configuration,), num_processes=n)
        plan_and_preprocess(dataset_id, planner, (configuration,), num_processes=n)
    return plans


def train_methods(dataset_name: str, methods, folds, device: str, logs: str, configuration: str = "3d_fullres",
                  jobs: int = 1):
    """``train_if_needed`` for every (trainer, plans) of ``methods`` and every fold; logs in ``logs/<trainer>.log``.

    ``jobs > 1`` runs up to ``jobs`` trainings at once, each as its own ``nnunet-ext train`` process (what one would
    otherwise start by hand in several terminals): worth it on a GPU whose utilisation one small-patch training
    leaves low. Each process gets ``nnUNet_n_proc_DA`` = (cores - jobs) // jobs augmentation workers unless the
    variable is set. A failed job fails the call, naming its log, after the others have finished."""
    if jobs <= 1:
        for fold in folds:
            for trainer, plans in methods:
                train_if_needed(dataset_name, configuration, fold, trainer, plans, device,
                                os.path.join(logs, f"{trainer}.log"))
        return
    _train_parallel(dataset_name, [(t, p, f) for f in folds for t, p in methods], device, logs, configuration, jobs)


def _train_parallel(dataset_name: str, todo, device: str, logs: str, configuration: str, jobs: int) -> None:
    """Up to ``jobs`` ``nnunet-ext train`` processes at once. If this process is stopped (SIGTERM, e.g. by
    ``timeout``, or Ctrl-C), it stops its trainings first, so that none keeps running unseen beside a rerun that
    resumes the same fold; each continues from its last checkpoint on the rerun."""
    import signal
    import subprocess
    import threading
    import time

    from nnunet_ext.errors import NnunetExtError

    env = dict(os.environ)
    env.setdefault("nnUNet_n_proc_DA", str(max(1, ((os.cpu_count() or 1) - jobs) // jobs)))
    os.makedirs(logs, exist_ok=True)
    pending, running, failed = list(todo), [], []

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                trainer, plans, fold = pending.pop(0)
                _, done, resume = _fold_state(dataset_name, trainer, plans, configuration, fold)
                if done:
                    continue
                log = os.path.join(logs, f"{trainer}_fold{fold}.log")
                cmd = [sys.executable, "-m", "nnunet_ext.cli", "train", dataset_name, configuration, str(fold),
                       "-tr", trainer, "-p", plans, "-device", device] + (["--c"] if resume else [])
                print(f"    start {trainer} ({plans}) fold {fold}{' (resuming)' if resume else ''}: log {log}",
                      file=sys.stderr, flush=True)
                f = open(log, "a", encoding="utf-8")
                running.append((subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env), f, trainer,
                                fold, log, time.time()))
            time.sleep(2)
            for job in list(running):
                proc, f, trainer, fold, log, t0 = job
                if proc.poll() is None:
                    continue
                running.remove(job)
                f.close()
                ok = proc.returncode == 0
                print(f"    {'done' if ok else 'FAILED'} {trainer} fold {fold} after {time.time() - t0:.0f} s"
                      + ("" if ok else f" (exit {proc.returncode}; see {log})"), file=sys.stderr, flush=True)
                if not ok:
                    failed.append(f"{trainer} fold {fold} ({log})")
    except BaseException:
        _stop_jobs(running)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if failed:
        raise NnunetExtError(f"training failed: {'; '.join(failed)}. Fix the cause shown in the log and rerun: "
                             "finished folds are skipped and interrupted ones continue from their checkpoint.")


def _stop_jobs(running, grace_s: float = 20.0) -> None:
    """SIGTERM every still running training, SIGKILL those not gone after ``grace_s``; say where each stopped."""
    import time

    for proc, *_ in running:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.time() + grace_s
    for proc, f, trainer, fold, log, _ in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except Exception:
            proc.kill()
            proc.wait()
        f.close()
        print(f"    stopped {trainer} fold {fold} (rerun to continue from its last checkpoint; log {log})",
              file=sys.stderr, flush=True)


def benchmark_methods(dataset_id: int, methods, folds, device: str, output_folder: str, command: str,
                      full_model: str | None = None, log_path: str | None = None, efficiency: bool = True):
    """``nnunet-ext benchmark`` of ``methods[1:]`` against ``methods[0]`` (the reference)."""
    from nnunet_ext.evaluation.benchmark import run_benchmark

    with quiet(log_path):
        return run_benchmark(dataset_id, [t if p == "nnUNetPlans" else f"{t}:{p}" for t, p in methods[1:]],
                             reference=methods[0][0], folds=list(folds), device=device, full_model=full_model,
                             output_folder=output_folder, efficiency=efficiency, command=command)


def start_run(output: str, device: str | None = None) -> tuple[str, str, str]:
    """Resolve the device (CUDA when available), make ``output`` the nnU-Net workspace and set CPU-friendly process
    counts. Returns ``(device, absolute output folder, log folder)``."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    root = os.path.abspath(output)
    use_workspace(root)
    cpu_friendly_processes(device)
    return device, root, os.path.join(root, "logs")
