"""Does TexLiverNet use its text? Lesion Dice on the synthetic referring task with real, shuffled and no texts.

The task (:mod:`nnunet_ext.conversion.synthetic_referring`): 2D liver slices with two or three lesions of the same
appearance, only one labelled; the case's text names that one's location and size. For each seed the script trains,
on fold 0 with the same schedule:

* ``TexLiverNetTrainer`` (TexLiverNetPlans, 2d): evaluated on the validation cases with the real texts, with shuffled
  texts (every case gets another case's text) and without text (the learned "no text" token);
* ``TexLiverNetTrainer_noText``: the same network with its text path off;
* ``nnUNetTrainer`` (nnUNetPlans, 2d): vanilla nnU-Net, the image-only reference.

Reported per method and seed: the mean lesion Dice (label 2) over the validation cases with a bootstrap 95% CI, and
the fraction of cases whose labelled lesion was found (Dice > 0.5); then pooled over the seeds. If shuffled texts
score as well as real ones, the text path is not being used.

    python benchmarks/texlivernet_text_check.py -o /tmp/textcheck --seeds 0 1      # CPU, about an hour
    python benchmarks/texlivernet_text_check.py -o /tmp/textcheck --smoke          # minutes: plumbing only

Writes ``<output>/text_check.json`` and prints a markdown table. Slow (not part of the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASET_ID = 909
METHODS = ("texlivernet_real", "texlivernet_shuffled", "texlivernet_none", "texlivernet_noText", "nnunet")


def _env(root: Path) -> None:
    for k in ("raw", "preprocessed", "results"):
        (root / k).mkdir(parents=True, exist_ok=True)
    os.environ.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
                      nnUNet_results=str(root / "results"), nnUNet_compile="f")
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    from nnunet_ext.paths import trainer_discovery_path

    os.environ["nnUNet_extTrainer"] = os.pathsep.join([trainer_discovery_path(), str(REPO / "benchmarks" /
                                                                                       "trainers")])


def _train(dataset: str, trainer: str, plans: str, seed: int, log: Path) -> float:
    """``nnunet-ext train`` in its own process (seeded, CPU); returns the wall time in seconds."""
    cmd = [sys.executable, "-m", "nnunet_ext.cli", "train", dataset, "2d", "0", "-tr", trainer, "-p", plans,
           "-device", "cpu", "--c"]  # --c: a rerun of the script continues (or skips) what an earlier run trained
    env = {**os.environ, "nnUNet_ext_seed": str(seed)}
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as f:
        res = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}")
    return time.time() - t0


def _lesion_dice(pred_folder: Path, labels: Path, cases: list[str]) -> np.ndarray:
    import SimpleITK as sitk

    from nnunet_ext.metrics.segmentation import dice

    out = []
    for c in cases:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / f"{c}.nii.gz"))) == 2
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_folder / f"{c}.nii.gz"))) == 2
        out.append(dice(pred, ref))
    return np.asarray(out)


def _summary(values: np.ndarray) -> dict:
    from nnunet_ext.metrics.statistics import bootstrap_mean

    iv = bootstrap_mean(values, 2000, 0)
    return {"n": int(values.size), "mean_dice": float(values.mean()), "ci_low": iv.low, "ci_high": iv.high,
            "found": float(np.mean(values > 0.5))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", required=True, help="workspace (nnUNet_* folders, logs, results)")
    p.add_argument("--n-cases", type=int, default=120)
    p.add_argument("--size", type=int, default=64, help="pixels per side")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    p.add_argument("--smoke", action="store_true", help="tiny data, 2 x 2 iterations, one seed")
    args = p.parse_args(argv)
    if args.smoke:
        args.n_cases, args.size, args.seeds, args.epochs, args.iterations = 12, 48, args.seeds[:1], 2, 2
    root = Path(args.output).resolve()
    _env(root)
    os.environ.update(TEXTCHECK_EPOCHS=str(args.epochs), TEXTCHECK_ITERATIONS=str(args.iterations))
    from nnunet_ext.conversion.synthetic_referring import convert_synthetic_referring, shuffled_texts
    from nnunet_ext.data.metadata import load_dataset_json
    from nnunet_ext.inference.predict import predict
    from nnunet_ext.planners.api import plan_and_preprocess

    started = time.time()
    raw = Path(convert_synthetic_referring(DATASET_ID, n_cases=args.n_cases, size=args.size, progress=False))
    plan_and_preprocess(DATASET_ID, "ExperimentPlanner", ("2d",), num_processes=1)
    plan_and_preprocess(DATASET_ID, "TexLiverNetPlanner", ("2d",), num_processes=1)
    name = raw.name
    splits_file = root / "preprocessed" / name / "splits_final.json"
    if not splits_file.exists():  # nnU-Net's own default split (seeded 5-fold KFold), written before training
        from nnunetv2.utilities.crossval_split import generate_crossval_split

        cases = sorted(p.name[:-len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))
        splits_file.write_text(json.dumps(generate_crossval_split(cases, seed=12345, n_splits=5)), encoding="utf-8")
    val = sorted(json.loads(splits_file.read_text(encoding="utf-8"))[0]["val"])
    texts = {k: v["text"] for k, v in load_dataset_json(str(raw / "dataset.json"))["nnunet_ext"]["cases"].items()}
    val_texts = {k: texts[k] for k in val}
    work = root / "work"
    images = work / "val_images"
    images.mkdir(parents=True, exist_ok=True)
    for c in val:
        target = images / f"{c}_0000.nii.gz"
        if not target.exists():
            os.symlink(raw / "imagesTr" / f"{c}_0000.nii.gz", target)
    files = {"real": work / "texts_real.json", "shuffled": work / "texts_shuffled.json"}
    files["real"].write_text(json.dumps(val_texts), encoding="utf-8")
    files["shuffled"].write_text(json.dumps(shuffled_texts(val_texts, seed=0)), encoding="utf-8")

    rows, per_case, times = [], {}, {}
    for seed in args.seeds:
        results = root / f"results_seed{seed}"
        results.mkdir(exist_ok=True)
        os.environ["nnUNet_results"] = str(results)
        logs = work / f"logs_seed{seed}"
        logs.mkdir(exist_ok=True)
        runs = {"texlivernet": ("TexLiverNetTrainer_textcheck", "TexLiverNetPlans"),
                "texlivernet_noText": ("TexLiverNetTrainer_noText_textcheck", "TexLiverNetPlans"),
                "nnunet": ("nnUNetTrainer_textcheck", "nnUNetPlans")}
        for key, (trainer, plans) in runs.items():
            times[f"{key}_seed{seed}"] = _train(name, trainer, plans, seed, logs / f"{trainer}.log")
        predictions = {}
        model = results / name / "TexLiverNetTrainer_textcheck__TexLiverNetPlans__2d"
        for variant, kw in (("real", {"texts": str(files["real"])}), ("shuffled", {"texts": str(files["shuffled"])}),
                            ("none", {"allow_missing_text": True})):
            out = work / f"pred_seed{seed}_texlivernet_{variant}"
            predict(str(images), str(out), str(model), folds=[0], device="cpu", disable_tta=True,
                    num_processes_preprocessing=1, num_processes_export=1, **kw)
            predictions[f"texlivernet_{variant}"] = out
        for key in ("texlivernet_noText", "nnunet"):
            trainer, plans = runs[key]
            out = work / f"pred_seed{seed}_{key}"
            predict(str(images), str(out), str(results / name / f"{trainer}__{plans}__2d"), folds=[0], device="cpu",
                    disable_tta=True, num_processes_preprocessing=1, num_processes_export=1)
            predictions[key] = out
        for method in METHODS:
            d = _lesion_dice(predictions[method], raw / "labelsTr", val)
            per_case[f"{method}_seed{seed}"] = d.tolist()
            rows.append({"method": method, "seed": seed, **_summary(d)})
    for method in METHODS:
        pooled = np.concatenate([per_case[f"{method}_seed{s}"] for s in args.seeds])
        rows.append({"method": method, "seed": "pooled", **_summary(pooled)})
    real, shuffled = (np.concatenate([per_case[f"texlivernet_{v}_seed{s}"] for s in args.seeds])
                      for v in ("real", "shuffled"))
    from nnunet_ext.metrics.statistics import paired_bootstrap_mean_difference, wilcoxon_paired

    diff = paired_bootstrap_mean_difference(real, shuffled, 2000, 0)
    result = {
        "command": "python benchmarks/texlivernet_text_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads default, nnUNet_n_proc_DA={os.environ['nnUNet_n_proc_DA']}",
        "n_cases": args.n_cases, "size": args.size, "validation_cases": len(val), "seeds": args.seeds,
        "schedule": {"epochs": args.epochs, "iterations_per_epoch": args.iterations},
        "rows": rows, "real_minus_shuffled": {"estimate": diff.estimate, "ci_low": diff.low, "ci_high": diff.high,
                                              "p_wilcoxon": wilcoxon_paired(real, shuffled)},
        "train_seconds": times, "wall_seconds": time.time() - started, "per_case_dice": per_case}
    (root / "text_check.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print("| method | seed | n | lesion Dice [95% CI] | lesion found (Dice > 0.5) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['seed']} | {r['n']} | {r['mean_dice']:.3f} [{r['ci_low']:.3f}, "
              f"{r['ci_high']:.3f}] | {r['found']:.2f} |")
    print(f"real - shuffled: {diff.estimate:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]; "
          f"wall {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
