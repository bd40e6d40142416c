"""DeSamba on multi-sequence MRI from a folder + CSV: convert, plan, train, predict with clinical features, Grad-CAM,
benchmark against early fusion with the same clinical features.

    python examples/desamba_mri.py --folder /data/spine --csv cases.csv -o runs/desamba --folds 0 1 2 3 4 \
        [--schedule 250epochs] [--test-images imagesTs/ --test-tabular clinical_test.csv]
    python examples/desamba_mri.py --smoke      # CI: a tiny synthetic folder + CSV written by the script

The CSV has one row per case (``nnunet-ext convert mri-classification``, docs/conversion.md): a case column, a class
label column, one column per sequence (image paths relative to the folder, e.g. ``T1, T2, T2FS``), a lesion ROI mask
column and clinical columns (numbers). Steps:

1. ``convert mri-classification``: one channel per sequence, the ROI as label 1, classes and clinical features into
   the dataset's metadata;
2. ``plan-and-preprocess`` with nnU-Net's planner (for the baseline) and the DeSamba planner (``DeSambaPlanner``
   against ``--gpu-memory-target`` on a GPU, ``DeSambaPlannerCPU``'s tiny preset on a CPU; the preprocessed data is
   shared);
3. training of ``DeSambaTrainer`` (DeSamba: "Decoupled Spectral Adaptive Framework for 3D Multi-Sequence MRI Lesion
   Classification", arXiv 2507.15487) and the baseline ``EarlyFusionTrainer_tabular`` (nnU-Net's U-Net on the
   stacked sequences with a classification head that also reads the clinical features) on the same folds;
4. ``nnunet-ext predict --tabular``: the held-out images of ``--test-images`` with ``--test-tabular``, or else the
   first fold's validation cases with their clinical features from the dataset (``classification.csv``);
5. ``nnunet-ext gradcam --tabular`` on the same cases: one Grad-CAM map per case and sequence, on the input image's
   grid, and a PNG overlay per case (needs the ``gradcam`` extra; skipped with a note without it, or with
   ``--no-gradcam``);
6. ``nnunet-ext benchmark``: DeSamba against the baseline on the cross-validation predictions (classification and
   lesion ROI segmentation metrics with confidence intervals), ``report/report.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import sys

from nnunet_ext.workflows import benchmark_methods, model_folder, quiet, stage, start_run, train_methods

SMOKE_SEQUENCES = ("T1", "T2", "T2FS")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--folder", help="folder with the images (CSV paths are relative to it)")
    p.add_argument("--csv", default=None, help="the table (default: the only *.csv in --folder)")
    p.add_argument("--sequences", nargs="+", default=None, help="sequence columns in channel order (default: every "
                                                                "column of image paths)")
    p.add_argument("--clinical", nargs="*", default=None, help="clinical columns (default: all other columns)")
    p.add_argument("--classes", nargs="+", default=None, help="class names (default: the distinct labels)")
    p.add_argument("--impute", choices=["median"], default=None, help="fill missing clinical values")
    p.add_argument("-d", type=int, default=560, help="dataset id to create")
    p.add_argument("-o", "--output", default="runs/desamba_mri", help="workspace (nnUNet_* folders)")
    p.add_argument("--folds", nargs="+", default=["0", "1", "2", "3", "4"])
    p.add_argument("--schedule", default="", help="trainer suffix, e.g. 250epochs (default: nnU-Net's 1000 epochs)")
    p.add_argument("--gpu-memory-target", dest="gpu_memory_target", type=float, default=8.0,
                   help="VRAM target in GB for DeSambaPlanner's preset (GPU runs)")
    p.add_argument("--test-images", default=None, help="held-out cases (CASE_XXXX.nii.gz, channels in sequence order)")
    p.add_argument("--test-tabular", default=None, help="their clinical features: CSV case_id + one column per "
                                                        "feature")
    p.add_argument("--no-gradcam", dest="gradcam", action="store_false", help="skip the Grad-CAM maps")
    p.add_argument("-device", default=None)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)

    from nnunet_ext.conversion.mri_classification import convert_mri_classification
    from nnunet_ext.planners.api import plan_and_preprocess

    device, root, logs = start_run(args.output, args.device)
    if args.smoke:
        args.folder, args.csv = synthetic_user_folder(os.path.join(root, "user_folder")), None
        args.folds, args.schedule = ["0"], "smoke"
    if not args.folder:
        p.error("--folder is required (or --smoke)")
    if args.test_images and not args.test_tabular:
        p.error("--test-images needs --test-tabular (DeSamba and the baseline read the clinical features)")
    suffix = f"_{args.schedule}" if args.schedule else ""

    stage("convert the folder + CSV (one channel per sequence, ROI as label 1, classes and clinical features)")
    with quiet(os.path.join(logs, "convert.log")):
        conv = convert_mri_classification(args.folder, args.d, csv_path=args.csv, name="DeSambaMRI",
                                          sequences=args.sequences, clinical=args.clinical, classes=args.classes,
                                          impute=args.impute)
    print(conv.summary(), file=sys.stderr)

    planner, plans = ("DeSambaPlannerCPU", "DeSambaPlansCPU") if device == "cpu" else ("DeSambaPlanner",
                                                                                       "DeSambaPlans")
    stage(f"plan and preprocess (nnUNetPlans, then {plans} reusing the data)")
    n = max(1, min(2, os.cpu_count() or 1))
    with quiet(os.path.join(logs, "plan.log")):
        plan_and_preprocess(args.d, "ExperimentPlanner", ("3d_fullres",), num_processes=n)
        plan_and_preprocess(args.d, planner, ("3d_fullres",), num_processes=n,
                            gpu_memory_target_in_gb=args.gpu_memory_target)
    methods = [(f"EarlyFusionTrainer_tabular{suffix}", "nnUNetPlans"), (f"DeSambaTrainer{suffix}", plans)]
    stage(f"train folds {args.folds} ({device}): " + ", ".join(t for t, _ in methods))
    train_methods(conv.dataset_name, methods, args.folds, device, logs)

    inputs, tabular = args.test_images, args.test_tabular
    if not inputs:
        inputs, tabular = validation_inputs(conv.dataset_name, args.folds[0], root)
    desamba = model_folder(conv.dataset_name, *methods[1])
    stage(f"predict {inputs} with DeSamba and the clinical features (nnunet-ext predict --tabular)")
    from nnunet_ext.inference.predict import predict

    predictions = os.path.join(root, "predictions")
    with quiet(os.path.join(logs, "predict.log")):
        predict(inputs, predictions, desamba, folds=[int(f) for f in args.folds], device=device,
                disable_tta=device == "cpu", num_processes_preprocessing=1, num_processes_export=1, tabular=tabular)
    print(f"segmentations and classification.csv in {predictions}", file=sys.stderr)

    gradcam_folder = None
    if args.gradcam:
        gradcam_folder = run_gradcam(inputs, tabular, desamba, args.folds, device, root, logs)

    stage("benchmark DeSamba against early fusion with clinical features (cross-validation predictions)")
    command = "python examples/desamba_mri.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    res = benchmark_methods(args.d, methods, args.folds, device, os.path.join(root, "report"), command,
                            log_path=os.path.join(logs, "benchmark.log"), efficiency=not args.smoke)
    print(f"report: {os.path.join(res.output_folder, 'report.md')}")
    return {"conversion": conv, "benchmark": res, "predictions": predictions, "gradcam": gradcam_folder}


def run_gradcam(inputs: str, tabular: str, model: str, folds, device: str, root: str, logs: str) -> str | None:
    """``nnunet-ext gradcam --tabular`` on the predicted cases; None (with a note) without the gradcam extra."""
    from nnunet_ext.inference.gradcam import GradCAMError, gradcam, require_captum

    try:
        require_captum()
    except GradCAMError as e:
        print(f"note: Grad-CAM skipped: {e}", file=sys.stderr)
        return None
    stage("Grad-CAM of the predicted class per case and sequence (nnunet-ext gradcam)")
    out = os.path.join(root, "gradcam")
    with quiet(os.path.join(logs, "gradcam.log")):
        gradcam(inputs, out, model, folds=[int(f) for f in folds], device=device, tabular=tabular)
    print(f"Grad-CAM maps (CASE_gradcam_<sequence>.nii.gz) and overlays (CASE_gradcam.png) in {out}",
          file=sys.stderr)
    return out


def validation_inputs(dataset_name: str, fold: str, root: str) -> tuple[str, str]:
    """The validation cases of ``fold`` linked into ``root/predict_input`` and their clinical features (from the
    dataset's metadata) as ``root/predict_tabular.csv``."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    raw = os.path.join(nnUNet_raw.get(), dataset_name)
    with open(os.path.join(nnUNet_preprocessed.get(), dataset_name, "splits_final.json"), encoding="utf-8") as f:
        val = sorted(json.load(f)[int(fold)]["val"])
    with open(os.path.join(raw, "dataset.json"), encoding="utf-8") as f:
        dataset_json = json.load(f)
    block = dataset_json["nnunet_ext"]
    inputs = os.path.join(root, "predict_input")
    os.makedirs(inputs, exist_ok=True)
    for case in val:
        for c in range(len(dataset_json["channel_names"])):
            name = f"{case}_{c:04d}{dataset_json['file_ending']}"
            if not os.path.exists(os.path.join(inputs, name)):
                os.symlink(os.path.join(raw, "imagesTr", name), os.path.join(inputs, name))
    tabular = os.path.join(root, "predict_tabular.csv")
    features = (block.get("tabular") or {}).get("feature_names") or []
    with open(tabular, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case_id", *features])
        for case in val:
            w.writerow([case, *block["cases"][case].get("tabular", [])])
    return inputs, tabular


def synthetic_user_folder(folder: str, n_cases: int = 6, shape=(16, 32, 32), seed: int = 7) -> str:
    """A user-style folder for ``--smoke``: per case one NIfTI per sequence and an ROI mask (the synthetic MRI
    generator's vertebral lesions, classes cycling), and ``cases.csv`` with case, label, the sequence columns, roi
    and the clinical columns age, crp, alp."""
    import numpy as np

    from nnunet_ext.conversion.synthetic import case_rngs, write_nifti
    from nnunet_ext.conversion.synthetic_mri import DEFAULT_CLASSES, TABULAR_FEATURES, synthesize_mri_case

    spacing = (3.0, 1.0, 1.0)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows = []
    for i, rng in enumerate(case_rngs(seed, n_cases)):
        case = synthesize_mri_case(rng, shape, spacing, SMOKE_SEQUENCES, i % 3)
        row = {"case": f"patient{i:02d}", "label": DEFAULT_CLASSES[case.class_index]}
        for s, name in enumerate(SMOKE_SEQUENCES):
            rel = f"images/patient{i:02d}_{name}.nii.gz"
            write_nifti(case.image[s], os.path.join(folder, rel), spacing)
            row[name] = rel
        rel = f"images/patient{i:02d}_roi.nii.gz"
        write_nifti(case.seg.astype(np.uint8), os.path.join(folder, rel), spacing)
        row["roi"] = rel
        row.update(zip(TABULAR_FEATURES, case.tabular))
        rows.append(row)
    with open(os.path.join(folder, "cases.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


if __name__ == "__main__":
    main()
