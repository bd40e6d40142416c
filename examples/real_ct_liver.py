"""A real single-phase CT through plan, train and predict: liver segmentation with vanilla nnU-Net and STD-Net (N=1).

    python examples/real_ct_liver.py --images my_cts/ --labels my_masks/ --liver-label 5 -o runs/liver --folds 0 1 2 3 4
    python examples/real_ct_liver.py --smoke      # CI: TotalSegmentator's example CT (../shared/data/real), cropped
                                                  # to the liver, a few iterations

Default data: ``../shared/data/real/ct_abdomen/example_ct_sm.nii.gz`` with TotalSegmentator's organ labels, liver =
label 5 (Wasserthal et al., Radiology: AI 2023; CC BY 4.0). With a single case it trains on fold ``all`` and predicts
that same case, so the Dice it prints checks the plumbing, not generalisation. ``--images``/``--labels`` take
folders of ``<case>.nii.gz`` CTs and label maps (matching names) for a real study.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nnunet_ext.workflows import (
    model_folder,
    plan_vanilla_and_stdnet,
    quiet,
    stage,
    start_run,
    train_methods,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ct_abdomen"


def build_dataset(images: list[Path], labels: list[Path], liver_label: int, dataset_id: int, root: str,
                  crop_margin: int | None = None) -> str:
    """Raw nnU-Net dataset ``Dataset{id}_RealLiverCT``: channel CT, labels background/liver (label map == liver).
    ``crop_margin`` crops each CT to the liver's bounding box plus that many voxels (fast smoke runs)."""
    import SimpleITK as sitk

    from nnunet_ext.data.metadata import save_json_atomic

    folder = os.path.join(root, f"Dataset{dataset_id}_RealLiverCT")
    os.makedirs(os.path.join(folder, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(folder, "labelsTr"), exist_ok=True)
    for img_path, lab_path in zip(images, labels):
        case = img_path.name.split(".")[0]
        img, lab = sitk.ReadImage(str(img_path)), sitk.ReadImage(str(lab_path))
        liver = sitk.Cast(lab == liver_label, sitk.sitkUInt8)
        if sitk.GetArrayViewFromImage(liver).sum() == 0:
            raise SystemExit(f"{lab_path}: no voxel has label {liver_label}. Fix: pass the liver's --liver-label.")
        liver.CopyInformation(img)
        if crop_margin is not None:
            stats = sitk.LabelShapeStatisticsImageFilter()
            stats.Execute(liver)
            x, y, z, sx, sy, sz = stats.GetBoundingBox(1)
            lo = [max(0, v - crop_margin) for v in (x, y, z)]
            hi = [min(n, v + s + crop_margin) for v, s, n in zip((x, y, z), (sx, sy, sz), img.GetSize())]
            size = [b - a for a, b in zip(lo, hi)]
            img, liver = (sitk.RegionOfInterest(im, size, lo) for im in (img, liver))
        sitk.WriteImage(img, os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
        sitk.WriteImage(liver, os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
    save_json_atomic({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
                      "numTraining": len(images), "file_ending": ".nii.gz", "name": "RealLiverCT"},
                     os.path.join(folder, "dataset.json"))
    return folder


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", help="folder of <case>.nii.gz CTs (default: TotalSegmentator's example CT)")
    p.add_argument("--labels", help="folder of <case>.nii.gz label maps with the same names")
    p.add_argument("--liver-label", type=int, default=5, help="liver value in the label maps (TotalSegmentator: 5)")
    p.add_argument("-d", type=int, default=540)
    p.add_argument("-o", "--output", default="runs/real_ct_liver")
    p.add_argument("--folds", nargs="+", default=None, help="default: all 5 folds, or 'all' for fewer than 5 cases")
    p.add_argument("--schedule", default="", help="trainer suffix, e.g. 100epochs (default: nnU-Net's 1000)")
    p.add_argument("-device", default=None)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)

    import numpy as np
    import SimpleITK as sitk

    from nnunet_ext.inference.predict import predict
    from nnunet_ext.metrics.segmentation import dice

    if args.images:
        images = sorted(Path(args.images).glob("*.nii.gz"))
        labels = [Path(args.labels) / i.name for i in images]
    else:
        images, labels = [REAL / "example_ct_sm.nii.gz"], [REAL / "example_seg.nii.gz"]
    missing = [str(f) for f in images + labels if not f.is_file()]
    if missing or not images:
        raise SystemExit(f"missing input files: {missing or 'no *.nii.gz in --images'}")
    folds = args.folds or (["all"] if len(images) < 5 else ["0", "1", "2", "3", "4"])
    schedule = "smoke" if args.smoke else args.schedule
    suffix = f"_{schedule}" if schedule else ""
    device, root, logs = start_run(args.output, args.device)
    env = {k: os.environ[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}

    stage(f"dataset from {len(images)} CT(s), liver = label {args.liver_label}")
    raw = build_dataset(images, labels, args.liver_label, args.d, env["nnUNet_raw"],
                        crop_margin=4 if args.smoke else None)
    name = os.path.basename(raw)
    stage("plan and preprocess (nnUNetPlans, STD-Net plans with N=1)")
    stdnet_plans = plan_vanilla_and_stdnet(args.d, device, os.path.join(logs, "plan.log"))
    methods = [(f"nnUNetTrainer{suffix}", "nnUNetPlans"), (f"STDNetTrainer{suffix}", stdnet_plans)]
    stage(f"train folds {folds}: " + ", ".join(t for t, _ in methods))
    train_methods(name, methods, folds, device, logs)

    stage("predict the training CT(s) and score the liver")
    scores = {}
    for trainer, plans in methods:
        out = os.path.join(root, "predictions", trainer)
        with quiet(os.path.join(logs, f"predict_{trainer}.log")):
            predict(os.path.join(raw, "imagesTr"), out, model_folder(name, trainer, plans),
                    folds=[f if f == "all" else int(f) for f in folds], device=device, disable_tta=args.smoke,
                    num_processes_preprocessing=1, num_processes_export=1)
        per_case = []
        for lab in sorted(Path(raw, "labelsTr").glob("*.nii.gz")):
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(lab))) == 1
            pred = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, lab.name))) == 1
            per_case.append(dice(pred, ref))
        scores[trainer] = float(np.mean(per_case))
        print(f"    {trainer}: liver Dice {scores[trainer]:.3f} on {len(per_case)} case(s) "
              f"({'training case(s): a plumbing check' if folds == ['all'] else 'see the benchmark for CV'})",
              file=sys.stderr)
    return {"dataset": name, "liver_dice": scores}


if __name__ == "__main__":
    main()
