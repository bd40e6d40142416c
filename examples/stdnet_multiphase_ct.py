"""STD-Net on multiphasic CT, the TCGA-LIHC way: DICOM studies -> registered nnU-Net dataset -> STD-Net and vanilla
nnU-Net (5-fold) -> inference -> benchmark against nnU-Net.

    python examples/stdnet_multiphase_ct.py --dicom-root /data/TCGA-LIHC --manifest manifest.csv \
        --classes HCC ICC benign -o runs/lihc --folds 0 1 2 3 4 [--schedule 250epochs] [--test-images imagesTs/]
    python examples/stdnet_multiphase_ct.py --smoke     # CI: synthetic study exported as DICOM, a few iterations

The manifest lists ``case, phase, series[, mask, label]`` (see docs/conversion.md): every phase is rigidly
registered to the portal venous phase (SimpleITK, Euler 3D, Mattes MI) and resampled onto its grid; masks live on the
reference grid. In ``--smoke`` mode a small synthetic multiphase study with known inter-phase motion is written as a
TCGA-like DICOM tree first, so the registration, planning, training, prediction and benchmark all run for real.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from nnunet_ext.workflows import (
    benchmark_methods,
    plan_vanilla_and_stdnet,
    quiet,
    stage,
    start_run,
    train_methods,
)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dicom-root", help="root of the DICOM studies (manifest paths are relative to it)")
    p.add_argument("--manifest", help="CSV: case, phase, series[, mask, label]")
    p.add_argument("--classes", nargs="+", help="class names (default: the distinct manifest labels)")
    p.add_argument("-d", type=int, default=520, help="dataset id to create")
    p.add_argument("-o", "--output", default="runs/stdnet_multiphase_ct", help="workspace (nnUNet_* folders)")
    p.add_argument("--folds", nargs="+", default=["0", "1", "2", "3", "4"])
    p.add_argument("--schedule", default="", help="trainer suffix, e.g. 250epochs (default: nnU-Net's 1000 epochs)")
    p.add_argument("--test-images", help="folder of held-out cases (CASE_XXXX.nii.gz) to predict")
    p.add_argument("-device", default=None)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)

    from nnunet_ext.conversion.dicom_multiphase import convert_dicom_multiphase
    from nnunet_ext.inference.predict import predict

    device, root, logs = start_run(args.output, args.device)
    if args.smoke:
        args.dicom_root, args.manifest = _synthetic_dicom_study(root, logs)
        args.folds, args.schedule, args.classes = ["0"], "smoke", None
    if not (args.dicom_root and args.manifest):
        p.error("--dicom-root and --manifest are required (or --smoke)")
    suffix = f"_{args.schedule}" if args.schedule else ""

    stage("convert DICOM studies (rigid registration to the portal venous phase)")
    with quiet(os.path.join(logs, "convert.log")):
        conv = convert_dicom_multiphase(args.dicom_root, args.d, manifest=args.manifest, name="MultiphaseCT",
                                        classes=args.classes, labels=["liver", "lesion"] if args.smoke else None)
    print(conv.summary(), file=sys.stderr)

    stage("plan and preprocess (nnUNetPlans, then STD-Net plans reusing the data)")
    stdnet_plans = plan_vanilla_and_stdnet(args.d, device, os.path.join(logs, "plan.log"))
    methods = [(f"nnUNetTrainer{suffix}", "nnUNetPlans"), (f"STDNetTrainer{suffix}", stdnet_plans)]
    stage(f"train folds {args.folds}: " + ", ".join(t for t, _ in methods))
    train_methods(conv.dataset_name, methods, args.folds, device, logs)

    predictions = None
    test_images = args.test_images or (os.path.join(conv.folder, "imagesTr") if args.smoke else None)
    if test_images:
        stage(f"predict {test_images} with STD-Net (ensemble of folds {args.folds})")
        predictions = os.path.join(root, "predictions")
        from nnunet_ext.workflows import model_folder

        with quiet(os.path.join(logs, "predict.log")):
            predict(test_images, predictions, model_folder(conv.dataset_name, *methods[1]),
                    folds=[int(f) for f in args.folds], device=device, disable_tta=args.smoke,
                    num_processes_preprocessing=1, num_processes_export=1)
        print(f"segmentations and classification.csv in {predictions}", file=sys.stderr)

    stage("benchmark STD-Net against vanilla nnU-Net (cross-validation predictions)")
    command = "python examples/stdnet_multiphase_ct.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    res = benchmark_methods(args.d, methods, args.folds, device, os.path.join(root, "report"), command,
                            log_path=os.path.join(logs, "benchmark.log"), efficiency=not args.smoke)
    print(f"report: {os.path.join(res.output_folder, 'report.md')}")
    return {"conversion": conv, "benchmark": res, "predictions": predictions}


def _synthetic_dicom_study(root: str, logs: str) -> tuple[str, str]:
    """A 6-case synthetic multiphase liver study with up to 3 mm / 3 deg inter-phase motion, as a DICOM tree."""
    from nnunet_ext.conversion.export_dicom import raw_dataset_to_dicom
    from nnunet_ext.conversion.synthetic_liver import convert_synthetic_liver

    with quiet(os.path.join(logs, "generate.log")):
        raw = convert_synthetic_liver(521, n_cases=6, shape=(24, 48, 48), seed=3, output_root=os.path.join(root, "src"),
                                      name="SmokeSource", progress=False)
        manifest = raw_dataset_to_dicom(raw, os.path.join(root, "dicom"))
    return os.path.join(root, "dicom"), str(manifest)


if __name__ == "__main__":
    main()
