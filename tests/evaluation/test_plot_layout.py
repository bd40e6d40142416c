"""Every figure the package writes is drawn in the package's own style, also after nnU-Net's progress plot has
leaked seaborn's ``font_scale=2.5`` into matplotlib's global settings: rendered with matplotlib's renderer, no text
leaves the figure and no two texts overlap."""

from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from nnunet_ext.metrics.statistics import Interval

matplotlib.use("Agg")


@pytest.fixture
def leaked_seaborn_style():
    """What a training run leaves behind: nnU-Net's progress plot calls ``seaborn.set(font_scale=2.5)``."""
    import seaborn

    with matplotlib.rc_context():
        seaborn.set(font_scale=2.5)
        yield


@pytest.fixture
def layouts(monkeypatch):
    """Record, for every figure saved, the window extents of its visible texts (measured right after the save, in
    the style the figure was saved in)."""
    found: list[dict] = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        self.canvas.draw()
        renderer = self.canvas.get_renderer()
        texts = []
        for t in _drawn_texts(self):
            texts.append((t.get_text(), t.get_window_extent(renderer), t.get_fontsize()))
        found.append({"figure": self.bbox, "texts": texts, "path": str(args[0]) if args else ""})
        return out

    monkeypatch.setattr(Figure, "savefig", savefig)
    return found


def _drawn_texts(fig: Figure) -> list[Text]:
    """The texts a draw puts on the canvas: tick labels only of the ticks inside the view limits (matplotlib keeps
    label objects for the others but does not draw them), and every other visible, non-empty text."""
    from matplotlib.axis import Tick

    ticks = {id(t) for t in fig.findobj(Tick)}
    tick_labels = {id(x) for t in fig.findobj(Tick) for x in (t.label1, t.label2)}
    out = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis._update_ticks():
                out += [x for x in (tick.label1, tick.label2) if x.get_visible() and x.get_text().strip()]
    for t in fig.findobj(Text):
        if id(t) in tick_labels or id(t) in ticks or not t.get_visible() or not t.get_text().strip():
            continue
        if t.axes is not None and not t.axes.get_visible():
            continue
        out.append(t)
    return out


def _problems(layout) -> list[str]:
    fig, texts = layout["figure"], layout["texts"]
    out = []
    for text, box, _ in texts:
        if box.x0 < fig.x0 - 1 or box.y0 < fig.y0 - 1 or box.x1 > fig.x1 + 1 or box.y1 > fig.y1 + 1:
            out.append(f"{text!r} leaves the figure ({box.bounds} outside {fig.bounds})")
    for (a, ba, _), (b, bb, _) in itertools.combinations(texts, 2):
        inter_w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
        inter_h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
        if inter_w > 1 and inter_h > 1:
            out.append(f"{a!r} overlaps {b!r}")
    return out


def _all_plots(tmp_path):
    from nnunet_ext.evaluation import plots
    from nnunet_ext.inference.attention import plot_case

    rng = np.random.default_rng(0)
    methods = ["EarlyFusionTrainer:nnUNetPlans:3d_fullres", "STDNetTrainer:STDNetPlans:3d_fullres",
               "nnUNetTrainer:nnUNetPlans:3d_fullres"]
    panels = {s: {m: rng.uniform(0.3, 0.9, 20) for m in methods} for s in ("liver", "lesion")}
    plots.violins_by_method(panels, "Dice", str(tmp_path / "v.png"), title="Dice per case")
    strata = {s: {m: rng.uniform(0, 1, 8) for m in methods} for s in ("< 200 mm³", "200-2000 mm³", "> 2000 mm³")}
    plots.violins_by_stratum(strata, "lesion Dice", str(tmp_path / "s.png"), title="Lesion Dice by lesion size")
    y = np.array([0, 1, 2] * 6)
    probs = {m: rng.dirichlet(np.ones(3), len(y)) for m in methods[:2]}
    plots.roc_curves(y, probs, ["HCC", "metastasis", "benign"], str(tmp_path / "r.png"))
    plots.confusion_matrices({m: rng.integers(0, 9, (3, 3)) for m in methods[:2]}, ["HCC", "metastasis", "benign"],
                             str(tmp_path / "c.png"))
    plots.ablation_bars({"Δ lesion Dice": {m: Interval(-0.05, -0.1, 0.01, 0.03, 1000) for m in methods[1:]},
                         "Δ macro AUC": {m: Interval(0.02, -0.04, 0.08, 0.03, 1000) for m in methods[1:]}},
                        methods[0],
                        str(tmp_path / "a.png"))
    plots.paired_scatter({"liver": (rng.uniform(0.5, 1, 10), rng.uniform(0.5, 1, 10)),
                          "lesion": (rng.uniform(0, 1, 10), rng.uniform(0, 1, 10))}, "Dice unperturbed",
                         "Dice perturbed", str(tmp_path / "p.png"), title="Robustness to misalignment")
    rows = [{"lesion": i + 1, "volume_mm3": v, **{f"attention_{p}": w for p, w in zip(
        ["arterial", "portal_venous", "delayed", "cls"], rng.dirichlet(np.ones(4)))}} for i, v in
        enumerate([120.0, 4500.0, 35.0])]
    plot_case(str(tmp_path / "att.png"), "case_001", rows, ["arterial", "portal_venous", "delayed"], 2)
    return 7


def test_every_plot_is_readable_even_after_a_leaked_seaborn_style(leaked_seaborn_style, layouts, tmp_path):
    n = _all_plots(tmp_path)
    assert len(layouts) == n
    problems = {layout["path"]: p for layout in layouts if (p := _problems(layout))}
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    for layout in layouts:  # the package's style, not seaborn's 2.5x fonts (matplotlib's default: 10 pt)
        assert max(size for _, _, size in layout["texts"]) <= 12, layout["path"]


def test_the_progress_plot_is_readable(leaked_seaborn_style, layouts, tmp_path):
    from types import SimpleNamespace

    from nnunet_ext.trainers.logging import plot_progress

    store = {"loss_seg_train": list(np.linspace(1, 0.3, 6)), "loss_seg_val": list(np.linspace(1.1, 0.4, 6)),
             "loss_cls_train": list(np.linspace(1.1, 0.9, 6)), "loss_cls_val": list(np.linspace(1.1, 1.0, 6)),
             "cls_val_accuracy": list(np.linspace(0.3, 0.6, 6)), "cls_val_auc": list(np.linspace(0.5, 0.7, 6))}
    plot_progress(SimpleNamespace(local_logger=SimpleNamespace(my_fantastic_logging=store)), str(tmp_path), True)
    assert len(layouts) == 1
    problems = [p for layout in layouts for p in _problems(layout)]
    assert not problems, problems
