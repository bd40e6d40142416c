"""TexLiverNet on 3D-IRCADb slices with their texts, against vanilla nnU-Net (2d) and TexLiverNet without text.

    python examples/texlivernet_ircadb.py --ircadb /data/3Dircadb1 -o runs/ircadb --folds 0 1 2 3 4 [--texts t.csv]
    python examples/texlivernet_ircadb.py --smoke      # CI: the synthetic referring task, a few iterations

Steps: ``nnunet-ext convert ircadb --2d`` (one case per axial slice with liver; the per-slice texts from ``--texts``,
or written by the rule-based describer), ``plan-and-preprocess`` with nnU-Net's planner and ``TexLiverNetPlanner``
on the ``2d`` configuration (the texts are embedded once by the frozen encoder, all-MiniLM-L6-v2 unless
``--text-encoder`` names a local model folder), training of ``nnUNetTrainer``, ``TexLiverNetTrainer`` and
``TexLiverNetTrainer_noText`` on the same folds, ``nnunet-ext predict --texts`` on the cases of the first fold's
validation set, and ``nnunet-ext benchmark`` (Dice, Dice Global, VOE, RAVD, HD95) with vanilla nnU-Net as reference.

Note: a 2D case is one slice, so nnU-Net's default split puts slices of one patient in training and validation. For
a patient-level evaluation write a ``splits_final.json`` that groups the slices of a patient (the slice ids are
``<patient>_z<slice>``) before training.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from nnunet_ext.workflows import quiet, stage, start_run, train_methods

CONFIGURATION = "2d"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ircadb", help="folder of 3Dircadb1.N subfolders (PATIENT_DICOM.zip, MASKS_DICOM.zip)")
    p.add_argument("--texts", default=None, help="CSV/JSON of texts per patient or per slice id (default: described)")
    p.add_argument("--text-encoder", dest="text_encoder", default=None,
                   help="a local Hugging Face model folder (e.g. BiomedBERT); default: all-MiniLM-L6-v2")
    p.add_argument("-d", type=int, default=541, help="dataset id of the 2D slice dataset")
    p.add_argument("-o", "--output", default="runs/texlivernet_ircadb")
    p.add_argument("--folds", nargs="+", default=["0", "1", "2", "3", "4"])
    p.add_argument("--schedule", default="", help="trainer suffix, e.g. 250epochs (default: nnU-Net's 1000 epochs)")
    p.add_argument("-device", default=None)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)

    from nnunet_ext.planners.api import plan_and_preprocess

    device, root, logs = start_run(args.output, args.device)
    if args.smoke:
        args.folds, args.schedule = ["0"], "smoke"
    elif not args.ircadb:
        p.error("--ircadb is required (or --smoke)")
    suffix = f"_{args.schedule}" if args.schedule else ""

    if args.smoke:
        from nnunet_ext.conversion.synthetic_referring import convert_synthetic_referring

        stage("generate the synthetic referring task (2D slices, two or three lesions, one named by the text)")
        with quiet(os.path.join(logs, "convert.log")):
            folder = convert_synthetic_referring(args.d, n_cases=10, size=48, progress=False)
        dataset_name = os.path.basename(folder)
    else:
        from nnunet_ext.conversion.ircadb import convert_ircadb_2d

        stage("convert 3D-IRCADb to 2D slices with texts")
        with quiet(os.path.join(logs, "convert.log")):
            conv = convert_ircadb_2d(args.ircadb, args.d, texts=args.texts)
        print(conv.summary(), file=sys.stderr)
        dataset_name = conv.dataset_name

    stage("plan and preprocess the 2d configuration (nnUNetPlans, then TexLiverNetPlans; texts embedded once)")
    with quiet(os.path.join(logs, "plan.log")):
        plan_and_preprocess(args.d, "ExperimentPlanner", (CONFIGURATION,), num_processes=2,
                            text_encoder=args.text_encoder)
        plan_and_preprocess(args.d, "TexLiverNetPlanner", (CONFIGURATION,), num_processes=2,
                            text_encoder=args.text_encoder)
    methods = [(f"nnUNetTrainer{suffix}", "nnUNetPlans"), (f"TexLiverNetTrainer{suffix}", "TexLiverNetPlans"),
               (f"TexLiverNetTrainer_noText{suffix}", "TexLiverNetPlans")]
    stage(f"train folds {args.folds} ({device}): " + ", ".join(t for t, _ in methods))
    train_methods(dataset_name, methods, args.folds, device, logs, configuration=CONFIGURATION)

    stage("predict the first fold's validation slices with their texts (nnunet-ext predict --texts)")
    predictions = predict_with_texts(dataset_name, methods[1], args.folds[0], device, root, logs)

    stage("benchmark TexLiverNet and its ablation against vanilla nnU-Net (2d)")
    from nnunet_ext.evaluation.benchmark import run_benchmark

    command = "python examples/texlivernet_ircadb.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    with quiet(os.path.join(logs, "benchmark.log")):
        res = run_benchmark(args.d, [f"{t}:{pl}:{CONFIGURATION}" for t, pl in methods[1:]],
                            reference=f"{methods[0][0]}:{methods[0][1]}:{CONFIGURATION}", folds=list(args.folds),
                            device=device, output_folder=os.path.join(root, "report"), efficiency=not args.smoke,
                            command=command)
    print(f"report: {os.path.join(res.output_folder, 'report.md')}")
    return {"benchmark": res, "predictions": predictions, "dataset": dataset_name}


def predict_with_texts(dataset_name: str, method: tuple[str, str], fold: str, device: str, root: str,
                       logs: str) -> str:
    """``nnunet-ext predict --texts`` on the validation cases of ``fold`` (their texts from dataset.json)."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    from nnunet_ext.inference.predict import predict
    from nnunet_ext.workflows import model_folder

    raw = os.path.join(nnUNet_raw.get(), dataset_name)
    with open(os.path.join(nnUNet_preprocessed.get(), dataset_name, "splits_final.json"), encoding="utf-8") as f:
        val = sorted(json.load(f)[int(fold)]["val"])
    with open(os.path.join(raw, "dataset.json"), encoding="utf-8") as f:
        cases = json.load(f)["nnunet_ext"]["cases"]
    inputs = os.path.join(root, "predict_input")
    os.makedirs(inputs, exist_ok=True)
    for case in val:
        link = os.path.join(inputs, f"{case}_0000.nii.gz")
        if not os.path.exists(link):
            os.symlink(os.path.join(raw, "imagesTr", f"{case}_0000.nii.gz"), link)
    texts = os.path.join(root, "predict_texts.json")
    with open(texts, "w", encoding="utf-8") as f:
        json.dump({c: cases[c]["text"] for c in val}, f, indent=1)
    out = os.path.join(root, "predictions", method[0])
    with quiet(os.path.join(logs, "predict.log")):
        predict(inputs, out, model_folder(dataset_name, method[0], method[1], CONFIGURATION), folds=[int(fold)],
                device=device, disable_tta=device == "cpu", num_processes_preprocessing=1, num_processes_export=1,
                texts=texts)
    return out


if __name__ == "__main__":
    main()
