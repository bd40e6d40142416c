"""Figures of the benchmark and robustness reports (matplotlib's object API, no pyplot state, PNG at 150 dpi).

Every function takes plain data (method name -> per-case values), writes one PNG and returns its path.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnunet_ext.metrics.statistics import Interval
from nnunet_ext.plotting import default_style

DPI = 150
_CMAP = "tab10"


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with default_style():
            return fn(*args, **kwargs)

    return wrapper


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps[_CMAP]
    return [cmap(i % 10) for i in range(n)]


def short_names(methods: Sequence[str]) -> dict[str, str]:
    """Plot labels: ``trainer:plans:configuration`` shortened to the trainer name where that stays unambiguous
    (the tables keep the full names)."""
    bare = {m: m.split(":", 1)[0] for m in methods}
    return bare if len(set(bare.values())) == len(bare) else {m: m for m in methods}


def _method_ticks(ax, positions, methods: Sequence[str], fontsize: float = 8) -> None:
    """Method names as x tick labels that cannot overlap: ``trainer:plans:configuration`` broken into lines at the
    colons, and set vertically when a line is too long to stand horizontally between its neighbours (an axis-aligned
    label's box is what it covers; a slanted label's neighbours would overlap it)."""
    lines = [str(m).replace(":", "\n") for m in methods]
    longest = max((len(part) for text in lines for part in text.split("\n")), default=0)
    vertical = longest > 10 and len(methods) > 1
    ax.set_xticks(list(positions), lines, rotation=90 if vertical else 0, ha="center",
                  va="top", fontsize=fontsize, linespacing=1.0)


def _figure(n_panels: int, panel_w: float = 4.2, panel_h: float = 3.8, max_cols: int = 3):
    cols = min(max(n_panels, 1), max_cols)
    rows = int(np.ceil(max(n_panels, 1) / cols))
    fig = Figure(figsize=(panel_w * cols, panel_h * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Figure, path: str) -> str:
    fig.savefig(path, dpi=DPI)
    return path


def _violin(ax, positions: Sequence[float], groups: Sequence[np.ndarray], colors: Sequence, width: float,
            seed: int = 0) -> None:
    """Violins (where a density exists: >= 2 distinct values) plus jittered points and a white mean diamond."""
    rng = np.random.default_rng(seed)
    for pos, vals, col in zip(positions, groups, colors):
        v = np.asarray(vals, dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        if np.unique(v).size >= 2:
            parts = ax.violinplot([v], positions=[pos], widths=width, showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(col)
                body.set_edgecolor("black")
                body.set_alpha(0.45)
        jitter = rng.uniform(-width / 6, width / 6, v.size)
        ax.scatter(pos + jitter, v, s=10, color=col, edgecolor="black", linewidth=0.3, zorder=3)
        ax.scatter([pos], [v.mean()], marker="D", s=28, color="white", edgecolor="black", zorder=4)


@_styled
def violins_by_method(panels: Mapping[str, Mapping[str, Sequence[float]]], ylabel: str, path: str,
                      title: str | None = None) -> str:
    """One panel per structure, one violin per method. ``panels``: {structure: {method: per-case values}}."""
    fig, axes = _figure(len(panels))
    for ax, (structure, by_method) in zip(axes, panels.items()):
        methods = list(by_method)
        _violin(ax, np.arange(len(methods)), [np.asarray(by_method[m]) for m in methods], _colors(len(methods)),
                0.7)
        _method_ticks(ax, np.arange(len(methods)), methods)
        ax.set_title(structure)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


@_styled
def violins_by_stratum(strata: Mapping[str, Mapping[str, Sequence[float]]], ylabel: str, path: str,
                       title: str | None = None) -> str:
    """Grouped violins: x = lesion-size stratum (with its n), colour = method, legend below the axes.
    ``strata``: {stratum: {method: values}}."""
    names = list(strata)
    methods = list(dict.fromkeys(m for s in strata.values() for m in s))
    colors = _colors(len(methods))
    width = 0.8 / max(1, len(methods))
    fig = Figure(figsize=(min(12.0, max(6.5, 1.5 + 0.9 * len(names) * max(1, len(methods)))), 4.8),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for j, m in enumerate(methods):
        pos = np.arange(len(names)) + (j - (len(methods) - 1) / 2) * width
        _violin(ax, pos, [np.asarray(strata[s].get(m, [])) for s in names], [colors[j]] * len(names), width * 0.9,
                seed=j)
    counts = [max((len(v) for v in strata[s].values()), default=0) for s in names]
    ax.set_xticks(np.arange(len(names)), [f"{s}\n(n={n})" for s, n in zip(names, counts)])
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    handles = [ax.scatter([], [], color=c, edgecolor="black", label=m) for m, c in zip(methods, colors)]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=min(len(methods), 3), frameon=False)
    if title:
        ax.set_title(title, fontsize=10, wrap=True)
    return _save(fig, path)


@_styled
def roc_curves(y_true: Sequence[int], probs_by_method: Mapping[str, np.ndarray], class_names: Sequence[str],
               path: str, aucs: Mapping[str, Sequence[float]] | None = None) -> str:
    """One panel per class (one-vs-rest), one ROC curve per method; legend with each method's AUC.
    ``probs_by_method``: {method: (N, K) probabilities}; ``aucs``: {method: per-class AUC} for the legend."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true, dtype=int)
    fig, axes = _figure(len(class_names), 4.2, 4.2)
    colors = _colors(len(probs_by_method))
    shown = {}
    for c, (ax, name) in enumerate(zip(axes, class_names)):
        positive = y == c
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        if 0 < positive.sum() < len(y):
            for col, (m, p) in zip(colors, probs_by_method.items()):
                fpr, tpr, _ = roc_curve(positive, np.asarray(p)[:, c])
                auc = aucs[m][c] if aucs is not None else float(np.trapezoid(tpr, fpr))
                shown.setdefault(m, []).append(f"{name} {auc:.3f}")
                ax.plot(fpr, tpr, color=col, lw=1.5)
        else:
            ax.text(0.5, 0.5, "not computable:\none class only", ha="center", va="center", fontsize=9)
        ax.set_title(f"{name} vs rest (n+={int(positive.sum())}, n-={int((~positive).sum())})", fontsize=9)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=col, lw=1.5, label=f"{m} (AUC {', '.join(shown[m])})")
               for col, m in zip(colors, probs_by_method) if m in shown]
    if handles:  # one legend for all panels, below them
        fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=1, frameon=False)
    return _save(fig, path)


@_styled
def confusion_matrices(matrices: Mapping[str, np.ndarray], class_names: Sequence[str], path: str) -> str:
    """One panel per method: counts, with row-normalised colour (recall per true class)."""
    fig, axes = _figure(len(matrices), 3.6 + 0.3 * len(class_names), 3.4 + 0.3 * len(class_names))
    for ax, (m, cm) in zip(axes, matrices.items()):
        cm = np.asarray(cm)
        rows = cm.sum(1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.6 else "black", fontsize=9)
        ticks = np.arange(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(ticks, class_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(m, fontsize=9)
    return _save(fig, path)


@_styled
def ablation_bars(panels: Mapping[str, Mapping[str, Interval]], full_model: str, path: str) -> str:
    """One panel per metric (e.g. "Δ lesion Dice", "Δ macro AUC"), one bar per ablated method: the paired
    difference (method - full model) with its bootstrap 95% CI as error bar."""
    fig, axes = _figure(len(panels), 4.6, 3.8)
    for ax, (metric, by_method) in zip(axes, panels.items()):
        methods = list(by_method)
        est = np.array([by_method[m].estimate for m in methods], dtype=float)
        lo = np.array([by_method[m].low for m in methods], dtype=float)
        hi = np.array([by_method[m].high for m in methods], dtype=float)
        err = np.vstack([np.nan_to_num(est - lo), np.nan_to_num(hi - est)])
        x = np.arange(len(methods))
        ax.bar(x, np.nan_to_num(est), color=["tab:red" if e < 0 else "tab:blue" for e in np.nan_to_num(est)],
               alpha=0.8, yerr=err, capsize=4, edgecolor="black", linewidth=0.5)
        ax.axhline(0, color="black", lw=0.8)
        for xi, e, l, h in zip(x, est, lo, hi):  # the value, beyond the whisker
            if np.isfinite(e):
                y = np.nanmax([e, h]) if e >= 0 else np.nanmin([e, l])
                ax.annotate(f"{e:+.3f}", (xi, y), xytext=(0, 3 if e >= 0 else -3), textcoords="offset points",
                            ha="center", va="bottom" if e >= 0 else "top", fontsize=8)
        ax.margins(y=0.12)
        span = np.nanmax(np.abs(np.concatenate([est, lo, hi]))) if np.isfinite(est).any() else 0.0
        if not span > 1e-9:  # all differences zero: a readable symmetric axis instead of a 1e-17 offset
            ax.set_ylim(-0.05, 0.05)
        ax.ticklabel_format(axis="y", useOffset=False)
        _method_ticks(ax, x, methods)
        ax.set_ylabel("method - full model")
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Difference to the full model {full_model}\n(bars: paired mean difference, whiskers: 95% "
                 "bootstrap CI)", fontsize=10)
    return _save(fig, path)


@_styled
def paired_scatter(panels: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
                   path: str, title: str | None = None) -> str:
    """One panel per structure: per-case score without (x) vs with (y) a perturbation, identity line dashed.
    ``panels``: {structure: (x values, y values)}."""
    fig, axes = _figure(len(panels), 3.8, 3.8)
    for ax, (name, (x, y)) in zip(axes, panels.items()):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        lo = float(min(np.nanmin(x), np.nanmin(y), 0.0)) if x.size else 0.0
        hi = float(max(np.nanmax(x), np.nanmax(y), 1.0)) if x.size else 1.0
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=0.8)
        ax.scatter(x, y, s=14, color="tab:blue", edgecolor="black", linewidth=0.3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
