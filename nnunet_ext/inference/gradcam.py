"""``nnunet-ext gradcam``: Grad-CAM maps of a DeSamba model's case-level class, one per case and MRI sequence.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV
2017) weights a layer's activation channels ``A_c`` by the spatial mean of the class logit's gradient,
``alpha_c = mean_v d y_k / d A_c(v)``, and keeps ``ReLU(sum_c alpha_c A_c)``. The DeSamba paper ("DeSamba: Decoupled
Spectral Adaptive Framework for 3D Multi-Sequence MRI Lesion Classification", arXiv 2507.15487) shows such maps per
sequence. Grad-CAM itself is captum's ``LayerGradCam`` (Kokhlikyan et al., "Captum: A unified and generic model
interpretability library for PyTorch", arXiv 2009.07896), installed with the ``gradcam`` extra
(``pip install 'nnunet-ext[gradcam]'``); this module only chooses the layers and the target, tiles the case and puts
the maps back on the input image's grid.

1. **Layers**: the last stage of each sequence's own encoder (DeSamba's ``encoders[i]``: the multi-scale fusion of
   the SAMNet and MambaOut branches, or SAMNet's last stage without MambaOut). That is f_i of the deepest level,
   which feeds the DRLM and the classifier, so there is one map per sequence.
2. **Target**: the class logit of the classification head. By default the case's predicted class: the case is first
   classified as ``nnunet-ext predict`` does (lesion-weighted patch votes, folds averaged; no test-time mirroring);
   ``--target-class`` (an index or a class name) picks another class.
3. **Tiling**: every case is preprocessed as nnU-Net preprocesses it for prediction and tiled with nnU-Net's sliding
   window (patch size, step size and padding of ``nnunet-ext predict``, as ``nnunet-ext attention`` does). Per patch
   and sequence, captum's ``LayerGradCam`` (ReLU applied) gives a map on the bottleneck grid, upsampled
   (tri/bilinear) to the patch; patches are accumulated with nnU-Net's Gaussian importance weights, folds averaged.
   The case inputs (``--tabular``) are bound as in prediction. Computed in float32 (no autocast).
4. **Scale**: per case the maps of all sequences are divided by their joint maximum, so they lie in [0, 1] and the
   sequences compare; the raw maximum (in logit units per activation unit) is ``scale`` in ``gradcam.json``.

Outputs in ``-o``: ``CASE_gradcam_<sequence><ending>`` (float32, one per sequence) on the input image's voxel grid
and geometry (taken back through resampling, cropping and transpose as nnU-Net exports a prediction, 0 outside
nnU-Net's crop), ``CASE_gradcam.png`` (each sequence's image with its map overlaid, at the axial slice of the largest
map mass; unless ``--no_plot``), and ``gradcam.csv`` / ``gradcam.json`` (one row per case: target class and where it
came from, the class probabilities, the share of the map mass per sequence, the scale, the slice shown; rows of
cases not run again are kept, rows of another model or fold set are refused).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_ext.architectures.case_binding import unwrap
from nnunet_ext.architectures.contract import PLANS_KEY
from nnunet_ext.inference import tables
from nnunet_ext.inference.attention import to_input_geometry, write_float_image
from nnunet_ext.inference.checks import InputError, check_input_folder, require_finite, torch_device

EXTRA = "gradcam"
CSV_NAME, JSON_NAME = "gradcam.csv", "gradcam.json"
MERGE_KEYS = ("model", "folds", "sequences", "class_names")


class GradCAMError(InputError):
    """A model, input or environment that cannot give Grad-CAM maps; the message names the fix."""


def require_captum():
    """captum's ``LayerGradCam`` and ``LayerAttribution``, or an error naming the extra that installs them."""
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError as e:
        raise GradCAMError(f"nnunet-ext gradcam computes Grad-CAM with captum, which is not installed ({e}). Fix: "
                           f"pip install 'nnunet-ext[{EXTRA}]' (or pip install captum).") from None
    return LayerGradCam, LayerAttribution


def sequence_layers(net: nn.Module) -> list[nn.Module]:
    """The last stage of each sequence's encoder (module docstring, step 1), in sequence order."""
    layers = []
    for enc in net.encoders:
        layers.append(enc.fusions[-1] if getattr(enc, "mambaout", False) else enc.sam_stages[-1])
    return layers


def gradcam_network(predictor) -> nn.Module:
    """The predictor's network (unwrapped), checked to have per-sequence encoders and a classification head."""
    net = unwrap(predictor.network)
    if not isinstance(getattr(net, "encoders", None), nn.ModuleList) or not hasattr(net, "cls_head"):
        raise GradCAMError(f"this model ({predictor.trainer_name}) is a {type(net).__name__}, not DeSamba: it has no "
                           "per-sequence encoders to compute Grad-CAM maps per sequence on. Fix: use a model trained "
                           "with DeSambaTrainer (or one of its ablations).")
    if net.cls_head is None:
        raise GradCAMError(f"this model ({predictor.trainer_name}) has no classification head (its dataset declares "
                           "no classes), so there is no class logit to explain. Fix: train on a dataset with case "
                           "classes (the nnunet_ext metadata's classification block).")
    return net


def case_class_logit(net: nn.Module, inputs: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x (B, C, *P) -> class logits (B, K)`` of ``net`` with the case inputs bound (expanded to the batch)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        bound = {k: (v if v.shape[0] == x.shape[0] else v.expand(x.shape[0], *v.shape[1:])) for k, v in inputs.items()}
        return net(x, return_heads=True, **bound).cls

    return forward


def patch_gradcam(forward: Callable[[torch.Tensor], torch.Tensor], layers: Sequence[nn.Module], patch: torch.Tensor,
                  target: int) -> torch.Tensor:
    """Grad-CAM of class ``target`` for every layer on one patch (1, C, *P) -> (len(layers), *P) float32: captum's
    ``LayerGradCam`` with ReLU, upsampled to the patch (trilinear in 3D, bilinear in 2D)."""
    layer_gradcam, layer_attribution = require_captum()
    size = tuple(patch.shape[2:])
    mode = "trilinear" if len(size) == 3 else "bilinear"
    maps = []
    with torch.enable_grad():
        for layer in layers:
            cam = layer_gradcam(forward, layer).attribute(patch, target=int(target), relu_attributions=True)
            maps.append(layer_attribution.interpolate(cam.detach().float(), size, mode)[0, 0])
    return torch.stack(maps)


def sliding_window_gradcam(predictor, forward: Callable[[torch.Tensor], torch.Tensor], layers: Sequence[nn.Module],
                           data: torch.Tensor, target: int) -> torch.Tensor:
    """One preprocessed case (C, *S) -> Grad-CAM maps (len(layers), *S) float32 on the CPU, Gaussian-weighted over
    nnU-Net's sliding-window patches (module docstring, step 3). ``predictor`` gives the patch size, step size,
    Gaussian switch and device."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    device = predictor.device
    patch_size = tuple(predictor.configuration_manager.patch_size)
    padded, revert = pad_nd_image(data, patch_size, "constant", {"value": 0}, True, None)
    slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    gaussian = (compute_gaussian(patch_size, sigma_scale=1. / 8, value_scaling_factor=10, device=device).float()
                if predictor.use_gaussian else torch.ones(patch_size, device=device))
    acc = torch.zeros((len(layers), *padded.shape[1:]), device=device)
    weight = torch.zeros(padded.shape[1:], device=device)
    for sl in slicers:
        patch = padded[sl][None].to(device)
        acc[sl] += patch_gradcam(forward, layers, patch, target) * gaussian
        weight[sl[1:]] += gaussian
    acc /= weight
    return acc[(slice(None), *revert[1:])].cpu()


def resolve_target(target_class, class_names: list[str]) -> int | None:
    """``--target-class``: None / "predicted" (the case's predicted class), a class index or a class name."""
    if target_class is None or str(target_class).strip().lower() == "predicted":
        return None
    text = str(target_class).strip()
    if text in class_names:
        return class_names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(class_names):
        return int(text)
    raise GradCAMError(f"--target-class {target_class!r} is neither a class of this model ({class_names}) nor an "
                       f"index 0..{len(class_names) - 1}. Fix: pass one of them, or leave it out for the predicted "
                       "class.")


def sequence_names(predictor, dataset_json: dict, n: int) -> list[str]:
    """The model's sequence names: the metadata's ``phases`` block, else the channel names (one channel each)."""
    names = list(predictor.plans_manager.plans.get(PLANS_KEY, {}).get("phases") or [])
    if len(names) != n:
        channels = dataset_json["channel_names"]
        per = len(channels) // n
        names = [channels[str(i * per)] for i in range(n)]
    return names


def best_slice(maps: np.ndarray) -> int:
    """The index along the first image axis (axial for (z, y, x) arrays) with the largest map mass (all sequences)."""
    return int(np.argmax(maps.reshape(maps.shape[0], maps.shape[1], -1).sum((0, 2))))


def plot_case(path: str, case: str, images: np.ndarray, maps: np.ndarray, sequences: list[str], title: str) -> int:
    """One panel per sequence: the input image (its own 1-99 percentile window) at :func:`best_slice` with the map
    overlaid (maps are in [0, 1]; below 0.05 transparent). Returns the slice shown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nnunet_ext.plotting import default_style

    z = best_slice(maps)
    with default_style():
        fig = Figure(figsize=(2.8 * len(sequences) + 0.8, 3.2), layout="constrained")
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(1, len(sequences)))
        im = None
        for ax, img, cam, name in zip(axes, images, maps, sequences):
            lo, hi = np.percentile(img[z], (1, 99))
            ax.imshow(img[z], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            im = ax.imshow(np.ma.masked_less(cam[z], 0.05), cmap="jet", vmin=0, vmax=1, alpha=0.45,
                           interpolation="bilinear")
            ax.set_title(name, fontsize=9)
            ax.set_axis_off()
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="Grad-CAM (case max = 1)")
        fig.suptitle(f"{case}: {title} (slice {z})", fontsize=9)
        fig.savefig(path, dpi=110)
    return z


def earlier_rows(output_folder: str, meta: dict, done_cases: set[str]) -> list[dict]:
    """Rows of an existing ``gradcam.json`` for cases not run again; rows of another model, fold set, sequence or
    class list are refused (checked before any case runs)."""
    return tables.earlier_rows(os.path.join(output_folder, JSON_NAME), "cases", meta, MERGE_KEYS, done_cases,
                               GradCAMError, "nnunet-ext gradcam")


def write_tables(output_folder: str, rows: list[dict], meta: dict) -> None:
    """``gradcam.json`` ({meta, "cases": rows}) and ``gradcam.csv``, each written to a temporary file, then renamed."""
    tables.write_tables(os.path.join(output_folder, JSON_NAME), os.path.join(output_folder, CSV_NAME), "cases", rows,
                        meta)


def check_map_writer(reader_writer) -> None:
    """The maps are written as float images in the input geometry: SimpleITK- or nibabel-read models only."""
    tables.require_geometry_writer(reader_writer, GradCAMError, "Grad-CAM maps",
                                   "convert the images to NIfTI and retrain, or use nnunet-ext predict only.")


def gradcam(input_folder: str, output_folder: str, model_folder: str, folds=None,
            checkpoint_name: str = "checkpoint_final.pth", step_size: float = 0.5, device: str = "cpu",
            tabular: str | None = None, target_class=None, plot: bool = True,
            trust_checkpoint: bool | None = None) -> list[dict]:
    """Grad-CAM maps per case and sequence for every case of ``input_folder`` (module docstring); returns the rows."""
    from nnunet_ext.data.metadata import load_dataset_json
    from nnunet_ext.inference.predict import prediction_case_inputs
    from nnunet_ext.inference.predictor import ClassifyingPredictor
    from nnunet_ext.paths import ensure_trainer_path, safe_name

    require_captum()
    ensure_trainer_path()
    dataset_json = load_dataset_json(os.path.join(model_folder, "dataset.json"))
    cases = check_input_folder(input_folder, dataset_json)
    ending = dataset_json["file_ending"]
    dev = torch_device(device)
    predictor = ClassifyingPredictor.from_model_folder(model_folder, folds, checkpoint_name, dev, step_size,
                                                       mirroring=False, trust_checkpoint=trust_checkpoint)
    net = gradcam_network(predictor).to(dev).eval()
    check_map_writer(predictor.plans_manager.image_reader_writer_class)
    class_names = predictor.class_names or [str(i) for i in range(int(predictor.settings["num_cls_classes"]))]
    given = resolve_target(target_class, class_names)
    predictor.case_inputs = prediction_case_inputs(predictor, cases, None, tabular)
    sequences = sequence_names(predictor, dataset_json, net.num_sequences)
    layers = sequence_layers(net)
    meta = {"model": os.path.abspath(model_folder), "folds": list(folds) if folds else "all",
            "sequences": sequences, "class_names": class_names,
            "layers": [f"encoders.{i}.{'fusions' if e.mambaout else 'sam_stages'}.{len(e.widths) - 1}"
                       for i, e in enumerate(net.encoders)]}
    kept = earlier_rows(output_folder, meta, set(cases))
    os.makedirs(output_folder, exist_ok=True)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    pm, cm = predictor.plans_manager, predictor.configuration_manager
    n_channels = len(dataset_json["channel_names"])
    rows = []
    for case in cases:
        files = [os.path.join(input_folder, f"{case}_{i:04d}{ending}") for i in range(n_channels)]
        data, _, props = preprocessor.run_case(files, None, pm, cm, dataset_json)
        data = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        require_finite(data, case)
        inputs = predictor.case_inputs.batch([case], predictor.uses, dev)
        probs = []
        for params in predictor.list_of_parameters:  # the case's class, as nnunet-ext predict gives it
            net.load_state_dict(params)
            probs.append(predictor.classify_preprocessed(data, case))
        probs = np.mean(probs, axis=0)
        target = int(np.argmax(probs)) if given is None else given
        maps = None
        forward = case_class_logit(net, inputs)
        for params in predictor.list_of_parameters:
            net.load_state_dict(params)
            m = sliding_window_gradcam(predictor, forward, layers, data, target)
            maps = m if maps is None else maps + m
        maps = (maps / len(predictor.list_of_parameters)).numpy()
        scale = float(maps.max())
        maps = maps / scale if scale > 0 else maps
        on_input = to_input_geometry(maps, props, pm, cm)
        for name, m in zip(sequences, on_input):
            write_float_image(m, os.path.join(output_folder, f"{case}_gradcam_{safe_name(name)}{ending}"), props)
        mass = on_input.reshape(len(sequences), -1).sum(1)
        row = {"case": case, "target_class": class_names[target], "target_index": target,
               "target_source": "predicted" if given is None else "given",
               "predicted_class": class_names[int(np.argmax(probs))]}
        row.update({f"prob_{c}": round(float(p), 5) for c, p in zip(class_names, probs)})
        row.update({f"share_{s}": round(float(v / mass.sum()) if mass.sum() > 0 else 0.0, 5)
                    for s, v in zip(sequences, mass)})
        row["scale"] = scale
        if plot:
            images = pm.image_reader_writer_class().read_images(files)[0]
            per = n_channels // len(sequences)
            row["slice_shown"] = plot_case(os.path.join(output_folder, f"{case}_gradcam.png"), case,
                                           images[::per], on_input, sequences,
                                           f"Grad-CAM of class {class_names[target]!r} ({row['target_source']})")
        rows.append(row)
    write_tables(output_folder, kept + rows, meta)
    return rows
