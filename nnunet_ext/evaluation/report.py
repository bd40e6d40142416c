"""Small helpers shared by the benchmark and robustness reports: number formatting, Markdown tables, CSV files and
the provenance block (date, command, machine, device, package versions)."""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence

from nnunet_ext.metrics.statistics import Interval, format_p

PACKAGES = ("nnunet-ext", "nnunetv2", "torch", "numpy", "scipy", "scikit-learn", "SimpleITK",
            "dynamic-network-architectures", "matplotlib")


def fmt(x, digits: int = 3) -> str:
    """A number for a table; ``n/a`` for None/NaN, integers without decimals."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.{digits}f}"


def fmt_interval(iv: Interval | None, digits: int = 3, signed: bool = False) -> str:
    """``0.812 [0.750, 0.871]`` (``+0.012 [...]`` with ``signed``)."""
    if iv is None or not math.isfinite(iv.estimate):
        return "n/a"
    est = f"{iv.estimate:+.{digits}f}" if signed else fmt(iv.estimate, digits)
    return f"{est} [{fmt(iv.low, digits)}, {fmt(iv.high, digits)}]"


def md_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub-flavoured Markdown table; cells are converted with ``str`` (``|`` escaped)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: str, rows: Sequence[Mapping], fieldnames: Sequence[str] | None = None) -> str:
    """Write dict rows to ``path`` (floats with full precision, NaN as empty); returns the path."""
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(k for r in rows for k in r))
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    os.replace(tmp, path)
    return path


def interval_columns(prefix: str, iv: Interval | None) -> dict:
    """CSV columns ``<prefix>``, ``<prefix>_ci_low``, ``<prefix>_ci_high``, ``<prefix>_se``, ``<prefix>_p``."""
    if iv is None:
        return {}
    return {prefix: iv.estimate, f"{prefix}_ci_low": iv.low, f"{prefix}_ci_high": iv.high, f"{prefix}_se": iv.se,
            f"{prefix}_p_bootstrap": iv.p_value}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(command: str | None, device: str) -> dict:
    """Date (UTC), command, host, platform, device and versions of one run."""
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": command or "(called from Python)", "host": platform.node(),
            "platform": platform.platform(), "device": device, "versions": package_versions()}


def provenance_markdown(prov: Mapping) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items())
    return "\n".join([f"- **Date**: {prov['date']}", f"- **Command**: `{prov['command']}`",
                      f"- **Machine**: {prov['host']} ({prov['platform']})", f"- **Device**: {prov['device']}",
                      f"- **Versions**: {versions}"])


# --------------------------------------------------------------------------- benchmark report
def _seg_summary_rows(res) -> list[dict]:
    out = []
    for r in res.segmentation:
        row = {k: r[k] for k in ("metric", "structure", "subset", "method", "n", "mean", "sd", "median", "q1", "q3",
                                 "ci_low", "ci_high")}
        if "diff" in r:
            row.update({"reference": res.reference, **interval_columns("diff_vs_reference", r["diff"]),
                        "p_wilcoxon": r["p_wilcoxon"], "p_wilcoxon_holm": r["p_holm"]})
        out.append(row)
    return out


def _cls_rows(res) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    cls = res.classification
    names = cls["class_names"]
    fold_of = {(r["method"], r["case"]): r["fold"] for r in res.case_rows}
    per_case, summary, delong, cms = [], [], [], []
    for m, p in cls["probs"].items():
        for i, c in enumerate(cls["cases"]):
            per_case.append({"method": m, "case": c, "fold": fold_of.get((m, c)), "true_class": names[cls["y"][i]],
                             "predicted_class": names[int(p[i].argmax())],
                             **{f"prob_{n}": float(v) for n, v in zip(names, p[i])}})
        r = cls["results"][m]
        s, iv = r["summary"], r["intervals"]
        row = {"method": m, "n": s["n_cases"], **interval_columns("accuracy", iv["accuracy"]),
               **interval_columns("auc_ovr_macro", iv["auc_ovr_macro"])}
        for n, civ in zip(names, iv["auc_per_class"]):
            row.update(interval_columns(f"auc_{n}", civ))
        row.update({k: s[k] for k in ("precision_weighted", "recall_weighted", "f1_weighted")})
        row.update({f"top_{k}_accuracy": v for k, v in s["top_k_accuracy"].items()})
        if "vs_reference" in r:
            row.update({"reference": cls["reference"],
                        **interval_columns("delta_accuracy", r["vs_reference"]["accuracy"]),
                        **interval_columns("delta_auc_ovr_macro", r["vs_reference"]["auc_ovr_macro"]),
                        "p_mcnemar": r["p_mcnemar"], "p_holm_delta_auc": r["p_holm"]["auc_ovr_macro"],
                        "p_holm_delta_accuracy": r["p_holm"]["accuracy"]})
            for n, d in zip(names, r["delong"]):
                delong.append({"method": m, "reference": cls["reference"], "class": n, "auc_method": d.auc_a,
                               "auc_reference": d.auc_b, "diff": d.diff, "se": d.se, "z": d.z, "p_delong": d.p_value})
        summary.append(row)
        for i, t in enumerate(names):
            for j, q in enumerate(names):
                cms.append({"method": m, "true_class": t, "predicted_class": q,
                            "count": s["confusion_matrix"][i][j]})
    return per_case, summary, delong, cms


def benchmark_tables(res) -> dict[str, tuple[list[dict], list[str] | None]]:
    """{file name: (rows, columns)} of every CSV a benchmark writes."""
    unit = res.small_lesion[1]
    case_fields = ["method", "fold", "case", "structure", "dice", "hd95", "assd", "voe", "ravd", "intersection_voxels",
                   "ref_voxels", "pred_voxels", "ref_volume_mm3", "pred_volume_mm3", "ref_empty", "pred_empty",
                   f"lesion_ref_volume_{unit}", "lesion_size"]
    tables = {"per_case_segmentation.csv": (res.case_rows, case_fields),
              "segmentation_summary.csv": (_seg_summary_rows(res), None),
              "volume_metrics.csv": (res.volume_metrics, None),
              "dropped_cases.csv": (res.dropped, ["case", "missing_for", "reason"])}
    if res.classification is not None:
        per_case, summary, delong, cms = _cls_rows(res)
        tables.update({"per_case_classification.csv": (per_case, None), "classification_summary.csv": (summary, None),
                       "classification_delong.csv": (delong, ["method", "reference", "class", "auc_method",
                                                              "auc_reference", "diff", "se", "z", "p_delong"]),
                       "confusion_matrices.csv": (cms, None)})
    if res.efficiency:
        tables["efficiency.csv"] = ([e.as_row() for e in res.efficiency], None)
    if res.ablation is not None:
        rows = [{"metric": k, "method": m, "full_model": res.ablation["full_model"], **interval_columns("diff", iv)}
                for k, by_m in res.ablation["panels"].items() for m, iv in by_m.items()]
        tables["ablation.csv"] = (rows, None)
    return tables


def _mean_sd(r) -> str:
    return f"{fmt(r['mean'])} ± {fmt(r['sd'])}"


def _segmentation_md(res) -> list[str]:
    from nnunet_ext.evaluation.benchmark import METRIC_LABELS, METRICS

    lines = []
    for metric in METRICS:
        rows = []
        for r in (r for r in res.segmentation if r["metric"] == metric):
            diff = fmt_interval(r.get("diff"), signed=True) if "diff" in r else "(reference)"
            rows.append([r["structure"], r["subset"], r["method"], r["n"], _mean_sd(r),
                         f"{fmt(r['median'])} [{fmt(r['q1'])}, {fmt(r['q3'])}]",
                         f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]", diff, format_p(r.get("p_wilcoxon")),
                         format_p(r.get("p_holm"))])
        lines += [f"### {METRIC_LABELS[metric]}", "",
                  md_table(["structure", "cases", "method", "n", "mean ± sd", "median [IQR]", "95% CI of mean",
                            f"Δ mean vs {res.reference} [95% CI]", "p (Wilcoxon)", "p (Holm)"], rows), ""]
    return lines


def _volume_md(res) -> list[str]:
    if not res.volume_metrics:
        return []

    def ci(r, k):
        value = r[k if k == "dice_global" else f"{k}_mean"]
        return f"{fmt(value)} [{fmt(r[k + '_ci_low'])}, {fmt(r[k + '_ci_high'])}]"

    rows = [[r["structure"], r["method"], r["n"], ci(r, "dice"), ci(r, "dice_global"), ci(r, "voe"),
             f"{ci(r, 'ravd')} (n={r['n_ravd']})"] for r in res.volume_metrics]
    return ["### Dice Global, VOE, RAVD", "",
            md_table(["structure", "method", "n", "mean Dice [95% CI]", "Dice Global [95% CI]", "VOE [95% CI]",
                      "RAVD [95% CI]"], rows), ""]


def _classification_md(res) -> list[str]:
    cls = res.classification
    names, ref = cls["class_names"], cls["reference"]
    k_top = min(2, len(names))
    rows, auc_rows = [], []
    for m in cls["probs"]:
        r = cls["results"][m]
        s, iv = r["summary"], r["intervals"]
        vs = r.get("vs_reference")
        rows.append([m, s["n_cases"], fmt_interval(iv["accuracy"]), fmt_interval(iv["auc_ovr_macro"]),
                     fmt(s["precision_weighted"]), fmt(s["recall_weighted"]), fmt(s["f1_weighted"]),
                     fmt(s["top_k_accuracy"][str(k_top)]),
                     fmt_interval(vs["auc_ovr_macro"], signed=True) if vs else "(reference)",
                     format_p(vs["auc_ovr_macro"].p_value) if vs else "",
                     fmt_interval(vs["accuracy"], signed=True) if vs else "(reference)",
                     format_p(r["p_mcnemar"]) if vs else ""])
        cells = []
        for c, civ in enumerate(iv["auc_per_class"]):
            p = f" (DeLong p {format_p(r['delong'][c].p_value)})" if vs else ""
            cells.append(fmt_interval(civ) + p)
        auc_rows.append([m, *cells])
    cm_lines = []
    for m in cls["probs"]:
        cm = cls["results"][m]["summary"]["confusion_matrix"]
        cm_lines += [f"**{m}** (rows: true, columns: predicted)", "",
                     md_table(["true \\ predicted", *names], [[n, *row] for n, row in zip(names, cm)]), ""]
    return [
        f"{len(cls['cases'])} labeled cases with a prediction from every method with a head "
        f"({cls['n_unlabeled']} unlabeled cases excluded). Classes: {', '.join(names)}. Comparisons against "
        f"**{ref}**.", "",
        md_table(["method", "n", "accuracy [95% CI]", "macro AUC (OvR) [95% CI]", "precision (w)", "recall (w)",
                  "F1 (w)", f"top-{k_top} acc.", f"Δ macro AUC vs {ref} [95% CI]", "p (bootstrap)",
                  f"Δ accuracy vs {ref} [95% CI]", "p (McNemar)"], rows), "",
        "Per-class one-vs-rest AUC [95% CI], DeLong test against the reference:", "",
        md_table(["method", *names], auc_rows), "", "Confusion matrices:", "", *cm_lines]


def _efficiency_md(res) -> list[str]:
    rows = []
    for e in res.efficiency:
        rows.append([e.method, fmt(e.parameters / 1e6, 2) if e.parameters is not None else "n/a",
                     fmt(e.flops_forward / 1e9, 2) if e.flops_forward is not None else "n/a",
                     "x".join(map(str, e.patch_size)) if e.patch_size else "n/a", fmt(e.peak_memory_mib, 1),
                     fmt(e.inference_s_per_case, 2), e.inference_case or "n/a", "; ".join(e.notes)])
    return [md_table(["method", "parameters (M)", "GFLOPs / forward", "patch", "peak forward memory (MiB)",
                      "inference (s/case)", "timed case", "notes"], rows), "",
            "FLOPs: one forward pass at the planned patch size, batch 1, all heads, multiply-add = 2 FLOPs "
            "(torch.utils.flop_counter). Peak memory: allocated during that pass beyond weights and input. Inference: "
            "sliding-window prediction of one preprocessed validation case with one fold, warm-up excluded, "
            f"median of repeats, on {res.provenance.get('device', '?')}.", ""]


def benchmark_markdown(res) -> str:
    """The full ``report.md`` of a benchmark."""
    from nnunet_ext.evaluation.benchmark import UNIT_LABELS
    from nnunet_ext.metrics.segmentation import EMPTY_BOTH_DICE

    thr, unit = res.small_lesion
    counts = {k: sum(1 for v in res.strata.values() if v == k) for k in ("small", "large", "no lesion")}
    method_rows = [[m.name, m.trainer, m.plans, m.configuration, "yes" if res.heads.get(m.name) else "no"]
                   for m in res.methods]
    lesion_name, lesion_labels, lesion_source = res.lesion
    lines = [f"# Benchmark on {res.dataset_name}", "", provenance_markdown(res.provenance), "", "## Data", "",
             md_table(["method", "trainer", "plans", "configuration", "classification head"], method_rows), "",
             f"- Reference: **{res.reference}**" + (f"; full model (ablation): **{res.ablation['full_model']}**"
                                                    if res.ablation else ""),
             f"- Folds used: {', '.join(map(str, res.folds))} (cross-validation predictions pooled; each case once)",
             f"- Cases: {len(res.cases)} predicted by every method; {len(res.dropped)} dropped "
             "(see dropped_cases.csv)",
             f"- Structures: {', '.join(f'{k} (labels {list(v)})' for k, v in res.structures.items())}",
             f"- Lesion: **{lesion_name}** (labels {list(lesion_labels)}, from {lesion_source}); size strata by the "
             f"case's total reference lesion volume: small < {thr:.4g} {UNIT_LABELS[unit]} <= large; cases: "
             f"{counts['small']} "
             f"small, {counts['large']} large, {counts['no lesion']} without lesion", ""]
    lines += [f"## Segmentation ({len(res.cases)} cases)", ""] + _segmentation_md(res) + _volume_md(res)
    lines += ["Figures: dice_violin.png, hd95_violin.png, dice_by_lesion_size.png, hd95_by_lesion_size.png.", ""]
    if res.classification is not None:
        lines += ["## Classification", ""] + _classification_md(res)
        lines += ["Figures: roc_curves.png, confusion_matrices.png.", ""]
    if res.efficiency:
        lines += ["## Efficiency", ""] + _efficiency_md(res)
    if res.ablation is not None:
        full = res.ablation["full_model"]
        rows = [[k, m, fmt_interval(iv, signed=True), format_p(iv.p_value)]
                for k, by_m in res.ablation["panels"].items() for m, iv in by_m.items()]
        lines += ["## Ablation", "", f"Differences to the full model **{full}** (method - full; paired bootstrap).",
                  "", md_table(["metric", "method", "Δ [95% CI]", "p (bootstrap)"], rows), "",
                  "Figure: ablation.png.", ""]
    if res.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in res.notes] + [""]
    lines += ["## Methods", "",
              f"- **Dice**; both masks empty: {EMPTY_BOTH_DICE:g}; one empty: 0. **Dice Global**: one Dice over all "
              "cases pooled (2 sum |P&R| / sum (|P|+|R|)), weighting cases by size. **VOE** 1 - |P&R|/|P|R| (both "
              "empty: 0). **RAVD** ||P|-|R||/|R|, over the cases with a reference.",
              "- **HD95**: max of the two directed 95th percentiles of the surface distances (MONAI/DeepMind "
              "definition); **ASSD**: mean of both directions' distances pooled. Surfaces are the border voxels "
              "(face-connected erosion), distances exact Euclidean in mm with the image spacing. Both empty: 0 mm; "
              "one empty: the image diagonal in mm (a finite worst case, as in BraTS).",
              f"- **95% CI**: percentile bootstrap over cases, {res.n_boot} resamples, seed {res.seed}; paired "
              "differences resample the same cases for both methods.",
              "- **p (Wilcoxon)**: two-sided Wilcoxon signed-rank test on per-case scores (scipy, zero differences "
              "dropped); **p (Holm)**: Holm-adjusted over the methods compared on that row's metric and subset.",
              "- **AUC**: one-vs-rest per class; macro = mean over the classes present (two classes: AUC of class 1). "
              "**DeLong**: per class one-vs-rest, fast algorithm of Sun & Xu (2014); the macro-AUC difference is "
              "tested with the paired bootstrap (normal approximation with the bootstrap SE), as the per-class AUCs "
              "share cases. **McNemar**: exact test on paired correct/incorrect predictions.",
              "- Precision, recall and F1 are support-weighted; top-k counts the true class among the k most "
              "probable.", ""]
    lines += ["## Files", ""] + [f"- `{os.path.basename(p)}`" for p in res.files.values()] + [""]
    return "\n".join(lines)
