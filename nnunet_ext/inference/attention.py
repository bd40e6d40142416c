"""``nnunet-ext attention``: STD-Net's temporal attention over the phases, per lesion, from a trained model folder.

STD-Net's Temporal Dynamics Modeler (Transformer over ``[CLS; F_1..F_N]`` at every bottleneck location; "Spatio-temporal
decoupling network for multiphasic liver lesion characterization", npj Digital Medicine 2025) lets the CLS token of
each location attend to the N phase tokens. The paper reads these weights as which phase the characterisation relies
on. This module turns them into one number per phase and lesion:

1. Every case is preprocessed as nnU-Net preprocesses it for prediction (transpose, crop to non-zero, resample,
   normalise: ``preprocessor.run_case``), then tiled with nnU-Net's sliding-window slicers (same patch size, step
   size and padding as ``nnunet-ext predict``; no test-time mirroring: mirrored inputs give other attention maps).
2. For every patch one forward pass returns the segmentation logits and the chosen layer's attention (default: the
   last layer). The CLS-to-phase weights, averaged over heads (:meth:`STDNet.cls_attention_maps`), live on the
   bottleneck grid; they are upsampled trilinearly to the patch and accumulated with nnU-Net's Gaussian importance
   weights, as the logits are. A multi-fold ensemble averages logits and maps over the folds.
3. Lesions are the connected components (26-connectivity) of the predicted lesion labels (as the model's plans
   record them, :mod:`nnunet_ext.data.lesion`), or, with ``-s``, of a given reference segmentation (e.g. the ground
   truth), preprocessed onto the same grid. Components smaller than ``min_lesion_voxels`` are
   skipped.
4. Per lesion: the mean over its voxels of each phase's attention, and ``attention_cls`` = what the CLS token keeps
   for itself (``1 - sum``), its volume and its centroid in the voxel indices of the input image (numpy order, as
   SimpleITK reads it).

Outputs in ``-o``: ``phase_attention.csv`` and ``phase_attention.json`` (one row per lesion; rows of cases not run
again are kept, rows of another model, fold set, layer or phase list are refused), one bar plot per case
(``CASE_phase_attention.png``) and, with ``--save_maps``, the per-phase maps twice: as images on the input image's
voxel grid and geometry, to overlay on the CT in a viewer (``CASE_attention_<phase><ending>``, float32, and
``CASE_attention_lesions<ending>``, the component ids of the table's ``lesion`` column; taken back through
resampling, cropping and transpose as nnU-Net exports a prediction, 0 outside nnU-Net's crop), and on the
preprocessed grid (``CASE_phase_attention.npz``: ``attention`` (N, *S) float16, ``lesions`` (int32 component ids),
``spacing``).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_ext.architectures.case_binding import unwrap
from nnunet_ext.architectures.contract import PLANS_KEY, case_settings
from nnunet_ext.inference import tables
from nnunet_ext.inference.checks import InputError, check_input_folder, require_finite, torch_device
from nnunet_ext.inference.tables import require_geometry_writer

CSV_NAME, JSON_NAME = "phase_attention.csv", "phase_attention.json"
MERGE_KEYS = ("model", "folds", "layer", "phases")  # rows are only merged with rows that agree on these


class AttentionError(InputError):
    """A model or input that cannot give attention over phases; the message names the fix."""


def attention_network(predictor):
    """The predictor's STD-Net (unwrapped from ``torch.compile``), checked to have a Transformer over phases."""
    net = unwrap(predictor.network)
    kind = getattr(net, "temporal_kind", None)
    if kind != "transformer":
        what = f"temporal={kind!r}" if kind else f"a {type(net).__name__}, not STD-Net"
        raise AttentionError(f"this model ({predictor.trainer_name}) is {what}: it has no attention over phases. "
                             "Fix: use a model trained with STDNetTrainer (or another trainer whose STD-Net keeps the "
                             "temporal Transformer, e.g. STDNetTrainer_noWeightSharing).")
    return net


@torch.inference_mode()
def sliding_window_attention(predictor, net, data: torch.Tensor, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """One preprocessed case (C, *S) -> (segmentation logits (K, *S), CLS-to-phase attention (N, *S)), both float32
    on the CPU, Gaussian-weighted over nnU-Net's sliding-window patches (module docstring, step 2)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    device = predictor.device
    patch_size = tuple(predictor.configuration_manager.patch_size)
    padded, revert = pad_nd_image(data, patch_size, "constant", {"value": 0}, True, None)
    slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    gaussian = (compute_gaussian(patch_size, sigma_scale=1. / 8, value_scaling_factor=10, device=device).float()
                if predictor.use_gaussian else torch.ones(patch_size, device=device))
    seg_acc = att_acc = None
    weight = torch.zeros(padded.shape[1:], device=device)
    with torch.autocast(device.type, enabled=device.type == "cuda"):  # as nnU-Net predicts: fp16 on CUDA only
        for sl in slicers:
            patch = padded[sl][None].to(device)
            if layer == -1:
                out = net(patch, return_heads=True, return_attention=True)
                seg, weights = out.seg, out.extras["attention"]
            else:
                seg, weights = net(patch), net.temporal_attention(patch)[layer]
            seg = seg[0] if isinstance(seg, (list, tuple)) else seg
            maps = F.interpolate(net.cls_attention_maps(weights, patch.shape[2:]).float(), size=patch_size,
                                 mode="trilinear", align_corners=False)[0]
            if seg_acc is None:
                seg_acc = torch.zeros((seg.shape[1], *padded.shape[1:]), device=device)
                att_acc = torch.zeros((maps.shape[0], *padded.shape[1:]), device=device)
            seg_acc[sl] += seg[0].float() * gaussian
            att_acc[sl] += maps * gaussian
            weight[sl[1:]] += gaussian
    seg_acc /= weight
    att_acc /= weight
    keep = (slice(None), *revert[1:])
    return seg_acc[keep].cpu(), att_acc[keep].cpu()


def lesion_labels(predictor) -> list[int] | None:
    """The model's lesion labels as its plans record them (:mod:`nnunet_ext.data.lesion`; None: region-based)."""
    return case_settings(predictor.plans_manager.plans)["lesion_labels"]


def lesion_mask_from_logits(predictor, logits: torch.Tensor) -> np.ndarray:
    """Predicted lesion voxels (bool, *S): argmax in the lesion labels, or any region above 0.5 for region models."""
    labels = lesion_labels(predictor)
    if labels is None:
        return (torch.sigmoid(logits) > 0.5).any(0).numpy()
    return np.isin(logits.argmax(0).numpy(), labels)


def original_voxel(properties: dict, preprocessed_shape, transpose_forward, point) -> list[float]:
    """A point on the preprocessed grid -> voxel indices of the input image (numpy order). Preprocessing was
    transpose -> crop -> resample, so: undo the resampling, add the crop offset, undo the transpose."""
    before = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=float)
    after = np.asarray(preprocessed_shape, dtype=float)
    lo = np.asarray([b[0] for b in properties["bbox_used_for_cropping"]], dtype=float)
    p = lo + (np.asarray(point, dtype=float) + 0.5) * before / after - 0.5
    out = np.empty_like(p)
    out[list(transpose_forward)] = p
    return [round(float(v), 1) for v in out]


def lesion_rows(case: str, attention: torch.Tensor, lesion: np.ndarray, phases: list[str], spacing, properties: dict,
                transpose_forward, source: str, min_lesion_voxels: int) -> tuple[list[dict], np.ndarray]:
    """Rows (one per connected lesion of at least ``min_lesion_voxels`` voxels) and the component map (int32)."""
    from scipy import ndimage

    components, n = ndimage.label(lesion, structure=np.ones((3,) * lesion.ndim, dtype=bool))
    att = attention.numpy()
    rows, kept = [], np.zeros_like(components, dtype=np.int32)
    voxel_mm3 = float(np.prod(spacing))
    for cid in range(1, n + 1):
        where = components == cid
        size = int(where.sum())
        if size < min_lesion_voxels:
            continue
        lesion_id = len(rows) + 1
        kept[where] = lesion_id
        per_phase = att[:, where].mean(1)
        row = {"case": case, "lesion": lesion_id, "lesion_source": source, "voxels": size,
               "volume_mm3": round(size * voxel_mm3, 2),
               "centroid_voxel": original_voxel(properties, lesion.shape, transpose_forward,
                                                np.argwhere(where).mean(0))}
        row.update({f"attention_{p}": round(float(a), 5) for p, a in zip(phases, per_phase)})
        row["attention_cls"] = round(float(1.0 - per_phase.sum()), 5)
        rows.append(row)
    return rows, kept


def to_input_geometry(maps: np.ndarray, properties: dict, plans_manager, configuration_manager,
                      is_seg: bool = False) -> np.ndarray:
    """Maps on the preprocessed grid (C, *S) -> the voxel grid of the input image (C, *S_input, numpy order as the
    image reader returns it), undoing preprocessing as nnU-Net exports a prediction
    (``convert_predicted_logits_to_segmentation_with_correct_shape``): resample back to the spacing before
    resampling (``resampling_fn_probabilities``, or ``resampling_fn_seg`` for label maps), put the crop back into an
    image of the size before cropping (0 outside the crop: nnU-Net crops to the non-zero region of the input, so
    there is no image there), undo the transpose."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    transpose = plans_manager.transpose_forward
    before = properties["shape_after_cropping_and_before_resampling"]
    original_spacing = [properties["spacing"][i] for i in transpose]
    spacing = list(configuration_manager.spacing)
    if len(spacing) < len(before):  # 2d configurations keep the slice spacing
        spacing = [original_spacing[0], *spacing]
    resample = configuration_manager.resampling_fn_seg if is_seg else configuration_manager.resampling_fn_probabilities
    resampled = np.asarray(resample(np.asarray(maps), before, spacing, original_spacing))
    full = np.zeros((resampled.shape[0], *properties["shape_before_cropping"]), dtype=resampled.dtype)
    for channel, crop in zip(full, resampled):
        insert_crop_into_image(channel, crop, properties["bbox_used_for_cropping"])
    return full.transpose([0, *[i + 1 for i in plans_manager.transpose_backward]])


def check_map_writer(reader_writer) -> None:
    """``--save_maps`` needs a SimpleITK or nibabel reader (the maps are images in the input geometry)."""
    require_geometry_writer(reader_writer, AttentionError, "With --save_maps the attention maps",
                            "leave --save_maps out (the per-lesion tables and plots are written either way).")


def write_float_image(array: np.ndarray, path: str, properties: dict) -> None:
    """A float32 image (*S_input, numpy order as the reader returned it) with the geometry of the input image the
    ``properties`` were read from, as nnU-Net's ``write_seg`` of the same reader would place a segmentation (which
    casts to integers, so it cannot write these maps)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if "sitk_stuff" in properties:
        import SimpleITK as sitk

        geometry = properties["sitk_stuff"]
        image = sitk.GetImageFromArray(array[0] if len(geometry["spacing"]) == 2 else array)
        image.SetSpacing(geometry["spacing"])
        image.SetOrigin(geometry["origin"])
        image.SetDirection(geometry["direction"])
        if "original_orientation" in geometry:  # SimpleITKIOWithReorient read it reoriented to RAS
            image = sitk.DICOMOrient(image, geometry["original_orientation"])
        sitk.WriteImage(image, path, True)
        return
    import nibabel

    geometry = properties["nibabel_stuff"]
    if "reoriented_affine" not in geometry:  # NibabelIO
        nibabel.save(nibabel.Nifti1Image(array.transpose((2, 1, 0)), geometry["original_affine"]), path)
        return
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    image = nibabel.Nifti1Image(array.transpose((2, 1, 0)), geometry["reoriented_affine"])
    back = ornt_transform(axcodes2ornt("RAS"), io_orientation(geometry["original_affine"]))
    nibabel.save(image.as_reoriented(back), path)


def save_maps_in_input_geometry(output_folder: str, case: str, attention: torch.Tensor, components: np.ndarray,
                                phases: list[str], properties: dict, predictor, ending: str) -> None:
    """``CASE_attention_<phase><ending>`` (float32, one per phase) and ``CASE_attention_lesions<ending>`` (the
    component ids of the table's ``lesion`` column), on the input image's voxel grid and geometry."""
    from nnunet_ext.paths import safe_name

    pm, cm = predictor.plans_manager, predictor.configuration_manager
    maps = to_input_geometry(attention.numpy(), properties, pm, cm)
    for phase, m in zip(phases, maps):
        write_float_image(m, os.path.join(output_folder, f"{case}_attention_{safe_name(phase)}{ending}"), properties)
    lesions = to_input_geometry(components[None].astype(np.int32), properties, pm, cm, is_seg=True)[0]
    pm.image_reader_writer_class().write_seg(lesions, os.path.join(output_folder, f"{case}_attention_lesions{ending}"),
                                             properties)


def plot_case(path: str, case: str, rows: list[dict], phases: list[str], layer: int) -> None:
    """Grouped bars: one group per lesion, one bar per phase (and the CLS remainder). Drawn in the package's style
    (:func:`nnunet_ext.plotting.default_style`: a seaborn style leaked by nnU-Net's progress plot would enlarge every
    font until the labels overlap), on a figure wide enough for one labelled group per lesion."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nnunet_ext.plotting import default_style

    names = [*phases, "cls"]
    with default_style():
        fig = Figure(figsize=(max(5.5, 0.3 * len(rows) * len(names) + 0.9 * len(rows) + 3.0), 3.6),
                     layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        width = 0.8 / len(names)
        x = np.arange(len(rows))
        for i, name in enumerate(names):
            ax.bar(x + (i - (len(names) - 1) / 2) * width, [r[f"attention_{name}"] for r in rows], width,
                   label="CLS itself" if name == "cls" else name, color="0.75" if name == "cls" else None)
        ax.set_xticks(x, [f"lesion {r['lesion']}\n{r['volume_mm3']:.0f} mm³" for r in rows], fontsize=8)
        ax.set_ylabel("CLS attention", fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_title(f"{case}: attention over phases per lesion\n(layer {layer}; mean over heads and lesion voxels)",
                     fontsize=9)
        fig.legend(fontsize=8, loc="outside right upper")
        fig.savefig(path, dpi=120)


def reference_segmentations(folder: str, cases: list[str], ending: str) -> dict[str, str]:
    """``CASE{ending}`` for every case, or an error naming the missing ones and the fix."""
    if not os.path.isdir(folder):
        raise AttentionError(f"reference segmentation folder {folder} does not exist. Fix: pass -s with a folder of "
                             f"CASE{ending} label maps (e.g. labelsTr), or leave -s out to use the predicted lesions.")
    files = {c: os.path.join(folder, c + ending) for c in cases}
    missing = [c for c, f in files.items() if not os.path.isfile(f)]
    if missing:
        raise AttentionError(f"{folder} has no reference segmentation for case(s) {missing[:10]} (expected "
                             f"{missing[0]}{ending}). Fix: add them, or leave -s out to use the predicted lesions.")
    return files


def earlier_rows(output_folder: str, meta: dict, done_cases: set[str]) -> list[dict]:
    """Rows of an existing ``phase_attention.json`` for cases not run again (nothing written before for other cases
    is lost). Rows of another model, fold set, layer or phase list are refused rather than mixed: checked before any
    case is run."""
    return tables.earlier_rows(os.path.join(output_folder, JSON_NAME), "lesions", meta, MERGE_KEYS, done_cases,
                               AttentionError, "nnunet-ext attention")


def write_tables(output_folder: str, rows: list[dict], meta: dict) -> None:
    """``phase_attention.json`` ({"model": ..., "lesions": rows}) and ``phase_attention.csv``, each written to a
    temporary file first and then renamed."""
    tables.write_tables(os.path.join(output_folder, JSON_NAME), os.path.join(output_folder, CSV_NAME), "lesions",
                        rows, meta)


def phase_attention(input_folder: str, output_folder: str, model_folder: str, folds=None,
                    checkpoint_name: str = "checkpoint_final.pth", step_size: float = 0.5, device: str = "cpu",
                    reference_folder: str | None = None, layer: int = -1, min_lesion_voxels: int = 10,
                    save_maps: bool = False, plot: bool = True, trust_checkpoint: bool | None = None) -> list[dict]:
    """Per-lesion attention over phases for every case of ``input_folder`` (module docstring); returns the new rows."""
    from nnunet_ext.data.metadata import load_dataset_json
    from nnunet_ext.inference.predictor import ClassifyingPredictor
    from nnunet_ext.paths import ensure_trainer_path

    ensure_trainer_path()
    dataset_json = load_dataset_json(os.path.join(model_folder, "dataset.json"))
    cases = check_input_folder(input_folder, dataset_json)
    ending = dataset_json["file_ending"]
    refs = reference_segmentations(reference_folder, cases, ending) if reference_folder else {}
    dev = torch_device(device)
    predictor = ClassifyingPredictor.from_model_folder(model_folder, folds, checkpoint_name, dev, step_size,
                                                       mirroring=False, trust_checkpoint=trust_checkpoint)
    net = attention_network(predictor).to(dev).eval()
    depth = len(net.temporal.blocks)
    if not -depth <= layer < depth:
        raise AttentionError(f"--layer {layer}: this model's Transformer has {depth} layers (0..{depth - 1}, or -1 "
                             "for the last). Fix: pass a layer in that range.")
    phases = list(predictor.plans_manager.plans.get(PLANS_KEY, {}).get("phases")
                  or [dataset_json["channel_names"][str(i)] for i in range(net.num_phases)])
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    transpose = predictor.plans_manager.transpose_forward
    spacing = predictor.configuration_manager.spacing
    layer_index = layer % depth
    meta = {"model": os.path.abspath(model_folder), "folds": list(folds) if folds else "all",
            "layer": layer_index, "phases": phases, "lesion_source": "reference" if refs else "prediction",
            "min_lesion_voxels": min_lesion_voxels}
    kept_rows = earlier_rows(output_folder, meta, set(cases))
    if save_maps:
        check_map_writer(predictor.plans_manager.image_reader_writer_class)
    os.makedirs(output_folder, exist_ok=True)
    files = {c: [os.path.join(input_folder, f"{c}_{i:04d}{ending}") for i in range(len(dataset_json["channel_names"]))]
             for c in cases}
    new_rows = []
    for case in cases:
        data, ref_seg, props = preprocessor.run_case(files[case], refs.get(case), predictor.plans_manager,
                                                     predictor.configuration_manager, dataset_json)
        data = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        require_finite(data, case)
        logits = attention = None
        for params in predictor.list_of_parameters:
            net.load_state_dict(params)
            lg, att = sliding_window_attention(predictor, net, data, layer)
            logits = lg if logits is None else logits + lg
            attention = att if attention is None else attention + att
        logits = logits / len(predictor.list_of_parameters)  # inference tensors: no in-place update outside
        attention = attention / len(predictor.list_of_parameters)
        if case in refs:
            labels = lesion_labels(predictor)
            lesion = ref_seg[0] > 0 if labels is None else np.isin(ref_seg[0], labels)
            source = "reference"
        else:
            lesion, source = lesion_mask_from_logits(predictor, logits), "prediction"
        rows, components = lesion_rows(case, attention, lesion, phases, spacing, props, transpose, source,
                                       min_lesion_voxels)
        if not rows:
            print(f"{case}: no {source} lesion of at least {min_lesion_voxels} voxels; no attention row written")
        elif plot:
            plot_case(os.path.join(output_folder, f"{case}_phase_attention.png"), case, rows, phases, layer_index)
        if save_maps:
            save_maps_in_input_geometry(output_folder, case, attention, components, phases, props, predictor, ending)
            np.savez_compressed(os.path.join(output_folder, f"{case}_phase_attention.npz"),
                                attention=attention.numpy().astype(np.float16), lesions=components,
                                spacing=np.asarray(spacing), phases=np.asarray(phases))
        new_rows += rows
    write_tables(output_folder, kept_rows + new_rows, meta)
    return new_rows
