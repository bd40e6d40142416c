"""STD-Net at N=1 on single-phase liver CT (LiTS or MSD Task03_Liver), against vanilla nnU-Net.

    python examples/single_phase_stdnet.py --lits /data/LiTS -o runs/lits --folds 0 1 2 3 4 [--schedule 250epochs]
    python examples/single_phase_stdnet.py --msd /data/Task03_Liver -o runs/msd
    python examples/single_phase_stdnet.py --smoke     # CI: a synthetic LiTS-layout download, a few iterations

The STD-Net paper evaluates its spatial encoder on single-phase LiTS/MSD: with one phase the temporal modeler sees a
sequence of length 2 (CLS + the phase) and STD-Net is an nnU-Net U-Net with a residual transformer at the
bottleneck. LiTS and MSD carry no lesion-type labels, so STD-Net trains without its characterization head here.
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
    src = p.add_mutually_exclusive_group()
    src.add_argument("--lits", help="folder with volume-N.nii / segmentation-N.nii")
    src.add_argument("--msd", help="the extracted Task03_Liver folder")
    p.add_argument("-d", type=int, default=530, help="dataset id to create")
    p.add_argument("-o", "--output", default="runs/single_phase_stdnet")
    p.add_argument("--folds", nargs="+", default=["0", "1", "2", "3", "4"])
    p.add_argument("--schedule", default="", help="trainer suffix, e.g. 250epochs (default: nnU-Net's 1000 epochs)")
    p.add_argument("-device", default=None)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)

    from nnunet_ext.conversion.lits import convert_lits
    from nnunet_ext.conversion.msd import convert_msd

    device, root, logs = start_run(args.output, args.device)
    if args.smoke:
        args.lits, args.msd = _synthetic_lits_download(root, logs), None
        args.folds, args.schedule = ["0"], "smoke"
    if not (args.lits or args.msd):
        p.error("--lits or --msd is required (or --smoke)")
    suffix = f"_{args.schedule}" if args.schedule else ""

    stage(f"convert {'LiTS' if args.lits else 'MSD Task03_Liver'}")
    with quiet(os.path.join(logs, "convert.log")):
        conv = convert_lits(args.lits, args.d) if args.lits else convert_msd(args.msd, args.d, name="MSDLiver")
    print(conv.summary(), file=sys.stderr)

    stage("plan and preprocess (nnUNetPlans, then STD-Net plans with N=1)")
    stdnet_plans = plan_vanilla_and_stdnet(args.d, device, os.path.join(logs, "plan.log"))
    methods = [(f"nnUNetTrainer{suffix}", "nnUNetPlans"), (f"STDNetTrainer{suffix}", stdnet_plans)]
    stage(f"train folds {args.folds}: " + ", ".join(t for t, _ in methods))
    train_methods(conv.dataset_name, methods, args.folds, device, logs)

    stage("benchmark STD-Net (N=1) against vanilla nnU-Net")
    command = "python examples/single_phase_stdnet.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    res = benchmark_methods(args.d, methods, args.folds, device, os.path.join(root, "report"), command,
                            log_path=os.path.join(logs, "benchmark.log"), efficiency=not args.smoke)
    print(f"report: {os.path.join(res.output_folder, 'report.md')}")
    return {"conversion": conv, "benchmark": res}


def _synthetic_lits_download(root: str, logs: str) -> str:
    """Six single-phase (portal venous) synthetic cases written in LiTS's layout: volume-N.nii, segmentation-N.nii
    with 0 background, 1 liver, 2 tumour."""
    import SimpleITK as sitk

    from nnunet_ext.conversion.synthetic_liver import convert_synthetic_liver

    with quiet(os.path.join(logs, "generate.log")):
        raw = convert_synthetic_liver(531, n_cases=6, shape=(24, 48, 48), phases=("portal_venous",), seed=5,
                                      output_root=os.path.join(root, "src"), name="SmokeSource", progress=False)
    download = os.path.join(root, "lits_download")
    os.makedirs(download, exist_ok=True)
    for i, case in enumerate(sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTr")))):
        sitk.WriteImage(sitk.ReadImage(os.path.join(raw, "imagesTr", f"{case}_0000.nii.gz")),
                        os.path.join(download, f"volume-{i}.nii"))
        sitk.WriteImage(sitk.ReadImage(os.path.join(raw, "labelsTr", f"{case}.nii.gz")),
                        os.path.join(download, f"segmentation-{i}.nii"))
    return download


if __name__ == "__main__":
    main()
