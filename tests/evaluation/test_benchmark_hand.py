"""The benchmark on a fake results tree whose every number is computed by hand (see ``CASES``)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.evaluation.benchmark import BenchmarkError, run_benchmark

SPACING = (5.0, 2.0, 1.0)  # (z, y, x) mm; a voxel is 10 mm^3
SHAPE = (1, 3, 4)
# (y, x) voxel lists per label, z = 0. With a single slice every voxel is a surface voxel, so surface distances are
# distances between voxel centres: 1 mm along x, 2 mm along y.
ORGAN = [(2, 0), (2, 1), (2, 2), (2, 3)]
CASES = {
    # case: (reference lesion, TrainerA lesion, TrainerB lesion, TrainerA organ, TrainerB organ)
    # c1 lesion (2 voxels, small). A: one extra voxel 1 mm away -> Dice 4/5, d(P->R) = [0, 0, 1] -> P95 = 0.9,
    #   d(R->P) = [0, 0]: HD95 0.9, ASSD 1/5. B: shifted 2 mm along y -> Dice 0, HD95 = ASSD = 2.
    "c1": ([(0, 0), (0, 1)], [(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1)], ORGAN, ORGAN),
    # c2 no lesion. A: none (Dice 1, 0 mm); organ misses one voxel: Dice 6/7, d(R->P) = [0, 0, 0, 1] -> P95 0.85,
    #   ASSD 1/7. B: one false-positive voxel -> Dice 0, HD95 = ASSD = image diagonal sqrt((2*2)^2 + (3*1)^2) = 5.
    "c2": ([], [], [(0, 0)], ORGAN[:3], ORGAN),
    # c3 lesion (4 voxels, large). A perfect. B: first two voxels -> Dice 4/6, d(R->P) = [0, 0, 1, 2] -> P95 1.85,
    #   ASSD 3/6.
    "c3": ([(0, 0), (0, 1), (0, 2), (0, 3)], [(0, 0), (0, 1), (0, 2), (0, 3)], [(0, 0), (0, 1)], ORGAN, ORGAN),
    # c4: only TrainerA predicted it -> reported and dropped
    "c4": ([(0, 0)], [(0, 0)], None, ORGAN, None),
}
FOLDS = {"c1": 0, "c2": 0, "c3": 1, "c4": 1}
CLASSES = {"c1": "benign", "c2": "malignant", "c3": "malignant", "c4": "benign"}
# TrainerB's head: predictions benign, malignant, benign -> accuracy 2/3; malignant scores 0.6, 0.4 > 0.3 -> AUC 1
PROBS_B = {"c1": (0.7, 0.3), "c2": (0.4, 0.6), "c3": (0.6, 0.4)}
# TrainerC (optional): TrainerB's segmentations, a head that is always wrong: accuracy 0, malignant AUC 0
PROBS_C = {"c1": (0.2, 0.8), "c2": (0.9, 0.1), "c3": (0.5, 0.5)}


def _write(path, lesion, organ):
    arr = np.zeros(SHAPE, np.uint8)
    for y, x in organ:
        arr[0, y, x] = 1
    for y, x in lesion:
        arr[0, y, x] = 2
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING[::-1])
    sitk.WriteImage(img, str(path))


def _write_head(model, probs):
    (model / "plans.json").write_text(json.dumps({"nnunet_ext": {"num_cls_classes": 2,
                                                                 "class_names": ["benign", "malignant"]}}))
    for fold in (0, 1):
        with open(model / f"fold_{fold}" / "validation" / "classification.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "predicted_class", "prob_benign", "prob_malignant", "true_class"])
            for case, p in probs.items():
                if FOLDS[case] == fold:
                    w.writerow([case, "benign" if p[0] >= p[1] else "malignant", p[0], p[1], CLASSES[case]])


def make_hand_tree(dirs, dataset_id: int, name: str = "HandBench", with_c: bool = False) -> str:
    ds = f"Dataset{dataset_id:03d}_{name}"
    pre = dirs["nnUNet_preprocessed"] / ds
    (pre / "gt_segmentations").mkdir(parents=True)
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
                    "numTraining": 4, "file_ending": ".nii.gz",
                    "nnunet_ext": {"format_version": 1,
                                   "classification": {"class_names": ["benign", "malignant"], "lesion_labels": [2]},
                                   "cases": {c: {"class": k} for c, k in CLASSES.items()}}}
    (pre / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    res = dirs["nnUNet_results"] / ds
    for case, (ref, a, b, organ_a, organ_b) in CASES.items():
        _write(pre / "gt_segmentations" / f"{case}.nii.gz", ref, ORGAN)
        for trainer, lesion, organ in (("TrainerA", a, organ_a), ("TrainerB", b, organ_b)) + (
                (("TrainerC", b, organ_b),) if with_c else ()):
            if lesion is None:
                continue
            val = res / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{FOLDS[case]}" / "validation"
            val.mkdir(parents=True, exist_ok=True)
            _write(val / f"{case}.nii.gz", lesion, organ)
    _write_head(res / "TrainerB__nnUNetPlans__3d_fullres", PROBS_B)
    if with_c:
        _write_head(res / "TrainerC__nnUNetPlans__3d_fullres", PROBS_C)
    return ds


@pytest.fixture(scope="module")
def hand_tree(nnunet_dirs):
    return make_hand_tree(nnunet_dirs, 971)


def _summary(res, metric, structure, subset, method):
    (row,) = [r for r in res.segmentation if (r["metric"], r["structure"], r["subset"], r["method"]) ==
              (metric, structure, subset, method)]
    return row


EXPECTED = {  # (metric, structure): (TrainerA per case c1..c3, TrainerB per case)
    ("dice", "lesion"): ([0.8, 1.0, 1.0], [0.0, 0.0, 4 / 6]),
    ("hd95", "lesion"): ([0.9, 0.0, 0.0], [2.0, 5.0, 1.85]),
    ("assd", "lesion"): ([0.2, 0.0, 0.0], [2.0, 5.0, 0.5]),
    ("dice", "organ"): ([1.0, 6 / 7, 1.0], [1.0, 1.0, 1.0]),
    ("hd95", "organ"): ([0.0, 0.85, 0.0], [0.0, 0.0, 0.0]),
    ("assd", "organ"): ([0.0, 1 / 7, 0.0], [0.0, 0.0, 0.0]),
}


def test_hand_checked_tables(hand_tree, tmp_path):
    out = tmp_path / "bench"
    res = run_benchmark(971, ["TrainerB"], reference="TrainerA", output_folder=str(out), small_lesion=3,
                        small_lesion_unit="voxels", efficiency=False, n_boot=200, command="hand")
    assert res.folds == [0, 1] and res.cases == ["c1", "c2", "c3"]
    assert [(d["case"], d["missing_for"]) for d in res.dropped] == [("c4", "TrainerB")]
    assert res.strata == {"c1": "small", "c2": "no lesion", "c3": "large"}
    assert res.lesion[:2] == ("lesion", (2,))

    rows = {(r["method"], r["case"], r["structure"]): r for r in res.case_rows}
    for (metric, structure), (a, b) in EXPECTED.items():
        for method, values in (("TrainerA", a), ("TrainerB", b)):
            got = [rows[(method, c, structure)][metric] for c in ("c1", "c2", "c3")]
            assert got == pytest.approx(values, abs=1e-12), (metric, structure, method)
            s = _summary(res, metric, structure, "all", method)
            assert s["n"] == 3
            assert s["mean"] == pytest.approx(np.mean(values))
            assert s["median"] == pytest.approx(np.median(values))
            assert s["sd"] == pytest.approx(np.std(values, ddof=1))
            assert s["ci_low"] <= s["mean"] <= s["ci_high"]
        s = _summary(res, metric, structure, "all", "TrainerB")
        assert s["diff"].estimate == pytest.approx(np.mean(b) - np.mean(a))
    # Wilcoxon, 3 pairs all in one direction: exact two-sided p = 2/8
    assert _summary(res, "dice", "lesion", "all", "TrainerB")["p_wilcoxon"] == pytest.approx(0.25)
    # strata
    assert _summary(res, "dice", "lesion", "small", "TrainerA")["mean"] == pytest.approx(0.8)
    assert _summary(res, "dice", "lesion", "large", "TrainerB")["mean"] == pytest.approx(4 / 6)
    assert _summary(res, "hd95", "lesion", "no lesion", "TrainerB")["mean"] == pytest.approx(5.0)
    # lesion volumes (10 mm^3 per voxel)
    assert rows[("TrainerA", "c3", "lesion")]["ref_volume_mm3"] == 40.0

    cls = res.classification
    assert cls["reference"] == "TrainerB" and cls["cases"] == ["c1", "c2", "c3"]
    s = cls["results"]["TrainerB"]["summary"]
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["auc_ovr_macro"] == 1.0
    assert s["confusion_matrix"] == [[1, 0], [1, 1]]
    assert s["f1_weighted"] == pytest.approx(2 / 3)

    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| lesion | all | TrainerB | 3 | 0.222 ± 0.385 | 0.000 [0.000, 0.333] |" in report
    assert "| lesion | all | TrainerA | 3 | 0.933 ± 0.115 | 1.000 [0.900, 1.000] |" in report
    assert "| lesion | all | TrainerB | 3 | 2.950 ± 1.777 |" in report  # HD95: sd of (2, 5, 1.85)
    assert "Folds used: 0, 1" in report and "small < 3 voxels" in report and "`hand`" in report
    with open(out / "per_case_segmentation.csv", encoding="utf-8") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 2 * 3 * 2
    r = next(r for r in csv_rows if (r["method"], r["case"], r["structure"]) == ("TrainerB", "c2", "lesion"))
    assert float(r["hd95"]) == 5.0 and r["ref_empty"] == "True" and r["lesion_size"] == "no lesion"
    with open(out / "segmentation_summary.csv", encoding="utf-8") as f:
        summary = list(csv.DictReader(f))
    row = next(r for r in summary if (r["metric"], r["structure"], r["subset"], r["method"]) ==
               ("dice", "lesion", "all", "TrainerB"))
    assert float(row["diff_vs_reference"]) == pytest.approx(2 / 9 - 14 / 15)
    for name in ("dice_violin.png", "hd95_violin.png", "dice_by_lesion_size.png", "roc_curves.png",
                 "confusion_matrices.png", "dropped_cases.csv", "classification_summary.csv"):
        assert (out / name).stat().st_size > 0, name


def test_parallel_metrics_equal_serial(hand_tree, tmp_path):
    kw = dict(reference="TrainerA", efficiency=False, n_boot=50)
    serial = run_benchmark(971, ["TrainerB"], output_folder=str(tmp_path / "s"), num_processes=1, **kw)
    parallel = run_benchmark(971, ["TrainerB"], output_folder=str(tmp_path / "p"), num_processes=2, **kw)
    key = lambda r: (r["method"], r["case"], r["structure"])  # noqa: E731
    comparable = lambda rows: [json.dumps(r, sort_keys=True) for r in sorted(rows, key=key)]  # noqa: E731  NaN-safe
    assert comparable(serial.case_rows) == comparable(parallel.case_rows)


def test_full_model_ablation_and_efficiency_without_plans(hand_tree, tmp_path):
    with pytest.warns(UserWarning, match="efficiency of TrainerB could not be measured"):  # a fake tree: no model
        res = run_benchmark(971, ["TrainerA", "TrainerB"], reference="TrainerA", output_folder=str(tmp_path),
                            full_model="TrainerA", efficiency=True, n_boot=50)
    iv = res.ablation["panels"]["Δ Dice (lesion)"]["TrainerB"]
    assert iv.estimate == pytest.approx(2 / 9 - 14 / 15)
    assert (tmp_path / "ablation.png").is_file()
    assert all(e.parameters is None and "no plans.json" in e.notes[0] for e in res.efficiency if e.method == "TrainerA")


def test_two_heads_compare_against_the_first_head(nnunet_dirs, tmp_path):
    """The reference (TrainerA) has no head, so classification compares TrainerC with TrainerB: Δ accuracy -2/3,
    Δ macro AUC -1; McNemar: B alone right on 2 cases, C alone on none -> exact p = 2 * 0.5^2 = 0.5."""
    make_hand_tree(nnunet_dirs, 974, "HandHeads", with_c=True)
    res = run_benchmark(974, ["TrainerB", "TrainerC"], reference="TrainerA", output_folder=str(tmp_path),
                        full_model="TrainerB", efficiency=False, n_boot=100)
    cls = res.classification
    assert cls["reference"] == "TrainerB"
    c = cls["results"]["TrainerC"]
    assert c["summary"]["accuracy"] == 0.0 and c["summary"]["auc_ovr_macro"] == 0.0
    assert c["vs_reference"]["accuracy"].estimate == pytest.approx(-2 / 3)
    assert c["vs_reference"]["auc_ovr_macro"].estimate == pytest.approx(-1.0)
    assert c["p_mcnemar"] == pytest.approx(0.5)
    assert all(math.isnan(d.p_value) for d in c["delong"])  # needs >= 2 cases per class
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Δ macro AUC vs TrainerB [95% CI]" in report
    assert "| TrainerC | 3 | 0.000 [0.000, 0.000] | 0.000 [" in report
    assert set(res.ablation["panels"]) == {"Δ Dice (lesion)", "Δ macro AUC"}
    with open(tmp_path / "classification_delong.csv", encoding="utf-8") as f:
        assert [r["class"] for r in csv.DictReader(f)] == ["benign", "malignant"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(methods=["TrainerB"], reference="TrainerA", folds=[0, 2]), r"TrainerA lacks fold\(s\) \[2\]"),
    (dict(methods=["NoSuchTrainer"], reference="TrainerA"), "NoSuchTrainer: results folder .* does not exist"),
    (dict(methods=["TrainerB:nnUNetPlans:3d_fullres:x"], reference="TrainerA"), "TRAINER\\[:PLANS"),
    (dict(methods=["TrainerB"], reference="TrainerA", full_model="TrainerC"), "--full-model"),
    (dict(methods=["TrainerB"], reference="TrainerA", labels=["kidney"]), "kidney"),
])
def test_bad_input_errors_name_the_problem(hand_tree, tmp_path, kwargs, match):
    with pytest.raises(BenchmarkError, match=match):
        run_benchmark(971, output_folder=str(tmp_path), efficiency=False, n_boot=10, **kwargs)


def test_shape_mismatch_names_case(nnunet_dirs, tmp_path):
    ds = make_hand_tree(nnunet_dirs, 972, "HandBad")
    bad = nnunet_dirs["nnUNet_results"] / ds / "TrainerB__nnUNetPlans__3d_fullres" / "fold_0" / "validation"
    img = sitk.GetImageFromArray(np.zeros((1, 3, 5), np.uint8))
    img.SetSpacing(SPACING[::-1])
    sitk.WriteImage(img, str(bad / "c2.nii.gz"))
    with pytest.raises(BenchmarkError, match="case c2: prediction .* has shape"):
        run_benchmark(972, ["TrainerB"], reference="TrainerA", output_folder=str(tmp_path), efficiency=False)


def test_no_common_case(nnunet_dirs, tmp_path):
    ds = make_hand_tree(nnunet_dirs, 973, "HandDisjoint")
    val = nnunet_dirs["nnUNet_results"] / ds / "TrainerB__nnUNetPlans__3d_fullres"
    for f in val.glob("fold_*/validation/*.nii.gz"):
        f.rename(f.with_name("other_" + f.name))
    with pytest.raises(BenchmarkError, match="no case was predicted by every method"):
        run_benchmark(973, ["TrainerB"], reference="TrainerA", output_folder=str(tmp_path), efficiency=False)


def test_dice_global_voe_and_ravd_by_hand(hand_tree, tmp_path):
    """The liver-tumour literature's metrics on the same cases, lesion structure:
    TrainerA: c1 pred 3 / ref 2 / overlap 2 -> VOE 1 - 2/3, RAVD 1/2; c2 both empty -> VOE 0, no RAVD; c3 perfect.
    Dice Global = 2 (2 + 0 + 4) / ((3 + 0 + 4) + (2 + 0 + 4)) = 12/13.
    TrainerB: c1 disjoint -> VOE 1, RAVD 0 (same size); c2 a false positive, no reference -> VOE 1, RAVD undefined;
    c3 2 of 4 -> VOE 1/2, RAVD 1/2. Dice Global = 2 (0 + 0 + 2) / ((2 + 1 + 2) + (2 + 0 + 4)) = 4/11."""
    res = run_benchmark(971, ["TrainerB"], reference="TrainerA", output_folder=str(tmp_path / "bench"),
                        efficiency=False, n_boot=200, command="hand")
    rows = {(r["method"], r["case"]): r for r in res.case_rows if r["structure"] == "lesion"}
    assert [rows[("TrainerA", c)]["voe"] for c in ("c1", "c2", "c3")] == pytest.approx([1 / 3, 0.0, 0.0])
    assert [rows[("TrainerB", c)]["voe"] for c in ("c1", "c2", "c3")] == pytest.approx([1.0, 1.0, 0.5])
    assert rows[("TrainerA", "c1")]["ravd"] == pytest.approx(0.5) and math.isnan(rows[("TrainerB", "c2")]["ravd"])
    summary = {(r["method"], r["structure"]): r for r in res.volume_metrics}
    a, b = summary[("TrainerA", "lesion")], summary[("TrainerB", "lesion")]
    assert a["dice_global"] == pytest.approx(12 / 13) and b["dice_global"] == pytest.approx(4 / 11)
    assert a["dice_global_ci_low"] <= a["dice_global"] <= a["dice_global_ci_high"]
    assert a["dice_mean"] == pytest.approx(np.mean([0.8, 1.0, 1.0]))
    assert a["voe_mean"] == pytest.approx(1 / 9) and b["voe_mean"] == pytest.approx(5 / 6)
    assert (a["ravd_mean"], a["n_ravd"]) == (pytest.approx(0.25), 2) and (b["ravd_mean"], b["n_ravd"]) == (
        pytest.approx(0.25), 2)
    report = (tmp_path / "bench" / "report.md").read_text(encoding="utf-8")
    assert "### Dice Global, VOE, RAVD" in report and "0.923" in report  # 12/13
    with open(tmp_path / "bench" / "volume_metrics.csv", newline="", encoding="utf-8") as f:
        assert {r["method"] for r in csv.DictReader(f)} == {"TrainerA", "TrainerB"}
