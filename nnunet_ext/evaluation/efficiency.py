"""Model cost: parameters, forward FLOPs at the planned patch size, peak forward memory, inference time per case.

What is measured (each report repeats it):

* **Network**: built exactly as nnU-Net's predictor builds it, through the trainer class found by name
  (``recursive_find_trainer_class_by_name(trainer).build_network_architecture(plans_manager,
  configuration_manager, n_in, n_out, False)``; deep supervision off), from the results folder's plans.json and
  dataset.json.
* **Parameters**: all parameters of the module (trainable or not), every head included.
* **FLOPs**: one forward pass of a (1, C, *patch_size) input in inference mode, counted by
  ``torch.utils.flop_counter.FlopCounterMode``: convolutions, transposed convolutions and matrix products, with a
  multiply-add counted as 2 FLOPs. Normalisation, activations and pooling are not counted (they are a small
  fraction for U-Nets). Networks with extra heads run ``forward(x, return_heads=True)``, so the heads are included.
* **Peak memory**: memory allocated during that forward pass beyond what was allocated before it (weights and the
  input), i.e. activations plus workspaces. On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation
  before the pass. On CPU: reconstructed from the allocator events recorded by ``torch.profiler`` with
  ``profile_memory=True`` (allocations at op start, frees at op end), which is what torch's CPU allocator handed
  out; it is not the process RSS.
* **Inference time**: wall time of nnU-Net's sliding-window prediction (``predict_logits_from_preprocessed_data``:
  tiling, Gaussian weighting, test-time mirroring as configured by the trainer, class heads of
  :class:`~nnunet_ext.inference.predictor.ClassifyingPredictor`) of one preprocessed validation case with one fold's
  weights, on the requested device, after one untimed warm-up run; median of ``repeats`` runs. Preprocessing and
  resampling/export are excluded, as they do not depend on the architecture.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch


@dataclass
class Efficiency:
    """Cost of one method. ``None`` entries could not be measured; ``notes`` say why."""

    method: str
    device: str
    patch_size: tuple[int, ...] | None = None
    parameters: int | None = None
    flops_forward: float | None = None
    peak_memory_mib: float | None = None
    inference_s_per_case: float | None = None
    inference_case: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_row(self) -> dict:
        row = asdict(self)
        row["patch_size"] = "x".join(map(str, self.patch_size)) if self.patch_size else ""
        row["notes"] = "; ".join(self.notes)
        return row


def _trainer_name(model_folder: str) -> str:
    """``Trainer`` of a results folder named ``Trainer__Plans__configuration``."""
    return os.path.basename(os.path.normpath(model_folder)).split("__")[0]


def build_network(model_folder: str, configuration: str):
    """The network of a results folder, built through its trainer class (deep supervision off).

    Returns ``(network, configuration_manager, number of input channels)``.
    """
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.data.metadata import load_dataset_json
    from nnunet_ext.paths import ensure_trainer_path

    ensure_trainer_path()
    plans_manager = PlansManager(os.path.join(model_folder, "plans.json"))
    dataset_json = load_dataset_json(os.path.join(model_folder, "dataset.json"))
    cm = plans_manager.get_configuration(configuration)
    trainer_class = recursive_find_trainer_class_by_name(_trainer_name(model_folder))
    n_in = determine_num_input_channels(plans_manager, cm, dataset_json)
    n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    net = trainer_class.build_network_architecture(plans_manager, cm, n_in, n_out, False)
    return net, cm, n_in


def count_parameters(network: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in network.parameters()))


def _forward(network: torch.nn.Module, x: torch.Tensor):
    """Forward pass through every head: for nnunet-ext networks ``return_heads=True`` with placeholder case inputs
    of the shapes the network declares (:meth:`~nnunet_ext.architectures.contract.ContractNetwork.
    example_case_inputs`); other networks (vanilla nnU-Net) ``forward(x)``."""
    from nnunet_ext.architectures.contract import ContractNetwork

    if not isinstance(network, ContractNetwork):
        return network(x)
    return network(x, return_heads=True, **network.example_case_inputs(x.shape[0], x.device))


def forward_flops(network: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one inference forward pass of a zero input of ``input_shape`` (B, C, *spatial), on the network's
    device."""
    from torch.utils.flop_counter import FlopCounterMode

    network = network.eval()
    x = torch.zeros(input_shape, device=next(network.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # inference_mode trips its module tracker
        _forward(network, x)
    return int(counter.get_total_flops())


@contextlib.contextmanager
def _stderr_silenced():
    """torch.profiler's C++ back end (kineto) writes "profiler_start/stop" lines, and on machines without a GPU a
    "gpuGetDeviceCount failed" error, straight to file descriptor 2: hide them while profiling."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_forward_memory(network: torch.nn.Module, input_shape: tuple[int, ...], device: torch.device
                        ) -> tuple[float, str]:
    """Peak bytes allocated by one inference forward pass beyond weights and input, and how it was measured."""
    network = network.eval().to(device)
    x = torch.zeros(input_shape, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            _forward(network, x)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base), "CUDA max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), _stderr_silenced(), profile(activities=[ProfilerActivity.CPU],
                                                             profile_memory=True) as prof:
        _forward(network, x)
    deltas = []
    for e in prof.events():
        mem = e.self_cpu_memory_usage
        if mem > 0:
            deltas.append((e.time_range.start, mem))
        elif mem < 0:
            deltas.append((e.time_range.start if e.name == "[memory]" else e.time_range.end, mem))
    deltas.sort(key=lambda t: (t[0], -t[1]))
    live = np.cumsum([d for _, d in deltas]) if deltas else np.zeros(1)
    return float(max(0.0, live.max())), "CPU allocator events (torch.profiler, profile_memory=True)"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_inference(model_folder: str, fold: int | str, data: torch.Tensor, device: torch.device,
                   repeats: int = 1) -> float:
    """Median seconds of the sliding-window prediction of one preprocessed case ``data`` (C, *spatial) with the
    weights of ``fold``, after one warm-up run (see module docstring)."""
    from nnunet_ext.inference.predictor import ClassifyingPredictor
    from nnunet_ext.paths import ensure_trainer_path

    ensure_trainer_path()
    predictor = ClassifyingPredictor.from_model_folder(model_folder, (fold,), "checkpoint_final.pth", device)
    if predictor.binding is not None:  # placeholder case inputs of the declared shapes (the cost does not vary)
        from nnunet_ext.architectures.case_binding import unwrap

        predictor.binding.bind("(timing)", unwrap(predictor.network).example_case_inputs(1, device))
    predictor.predict_logits_from_preprocessed_data(data)  # warm-up: allocations, cuDNN autotuning, caches
    times = []
    for _ in range(max(1, repeats)):
        _synchronize(device)
        t0 = time.perf_counter()
        predictor.predict_logits_from_preprocessed_data(data)
        _synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def load_preprocessed_case(preprocessed_dataset_folder: str, data_identifier: str, case_id: str) -> torch.Tensor:
    """Preprocessed image data (C, *spatial) of one case from ``nnUNet_preprocessed/DatasetXXX/<data_identifier>``."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = os.path.join(preprocessed_dataset_folder, data_identifier)
    dataset = infer_dataset_class(folder)(folder, [case_id])
    return torch.from_numpy(np.asarray(dataset.load_case(case_id)[0][:], dtype=np.float32))


def measure_efficiency(method: str, model_folder: str, configuration: str, device: str | torch.device,
                       fold: int | str | None = None, case_id: str | None = None,
                       preprocessed_dataset_folder: str | None = None, repeats: int = 1) -> Efficiency:
    """Every cost of one method that can be measured; the rest is ``None`` with a note (no checkpoint, no
    preprocessed case, ...). ``fold``/``case_id`` select the weights and the validation case that is timed."""
    dev = torch.device(device)
    eff = Efficiency(method=method, device=describe_device(dev))
    if not os.path.isfile(os.path.join(model_folder, "plans.json")):
        eff.notes.append(f"no plans.json in {model_folder}: network not built")
        return eff
    net, cm, n_in = build_network(model_folder, configuration)
    eff.patch_size = tuple(int(s) for s in cm.patch_size)
    shape = (1, n_in, *eff.patch_size)
    net = net.to(dev)
    eff.parameters = count_parameters(net)
    eff.flops_forward = float(forward_flops(net, shape))
    peak, how = peak_forward_memory(net, shape, dev)
    eff.peak_memory_mib = peak / 2 ** 20
    eff.notes.append(f"peak memory: {how}")
    del net
    if fold is None or case_id is None:
        eff.notes.append("inference time: no fold/case given")
        return eff
    checkpoint = os.path.join(model_folder, f"fold_{fold}", "checkpoint_final.pth")
    if not os.path.isfile(checkpoint):
        eff.notes.append(f"inference time: no {checkpoint}")
        return eff
    if preprocessed_dataset_folder is None or not os.path.isdir(
            os.path.join(preprocessed_dataset_folder, cm.data_identifier)):
        eff.notes.append(f"inference time: no preprocessed data folder {cm.data_identifier}")
        return eff
    data = load_preprocessed_case(preprocessed_dataset_folder, cm.data_identifier, case_id)
    eff.inference_s_per_case = time_inference(model_folder, fold, data, dev, repeats)
    eff.inference_case = f"{case_id} (fold {fold}, shape {'x'.join(map(str, data.shape[1:]))})"
    return eff


def describe_device(device: torch.device) -> str:
    """A human-readable device string, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu (x86_64, 2 threads)``."""
    import platform

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
