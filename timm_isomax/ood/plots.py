"""PNG plots of OOD evaluations: ID-vs-OOD score histograms (as Figure 1 of the IsoMax+ paper) and ROC
curves, one figure of each per OOD set with every model and score side by side.

Matplotlib is imported only when a plot is drawn, and figures are drawn on matplotlib's Agg canvas
directly (no pyplot, so no global backend is switched and no display is needed).

Example:
    >>> panels = [ScorePanel("softmax / msp", id_msp, ood_msp), ScorePanel("isomaxplus / mds", id_mds, ood_mds)]
    >>> plot_score_histograms(panels, "mnist", "notmnist", "out/hist_notmnist.png")
    >>> plot_roc_curves(panels, "mnist", "notmnist", "out/roc_notmnist.png")
"""
import math
import re
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Union

import numpy as np

from .metrics import TPR_LEVEL, as_score_array, ood_metrics, roc_curve
from .deploy import fit_threshold

__all__ = ["ScorePanel", "plot_score_histograms", "plot_roc_curves", "save_plots", "plot_benchmark", "plots_unavailable"]

ID_COLOR, OOD_COLOR = "tab:blue", "tab:orange"
# A ROC curve has one point per distinct score; more than this many are thinned for drawing only.
_MAX_ROC_POINTS = 5000


class ScorePanel(NamedTuple):
    """One model + score: its ID and OOD scores (higher = more in-distribution)."""

    label: str
    id_scores: np.ndarray
    ood_scores: np.ndarray


def plots_unavailable() -> Optional[str]:
    """Why no plot can be drawn here (matplotlib, an optional extra, is not installed), or None.

    Commands that plot by default ask first, so a plain ``pip install timm-isomax`` skips the plots with one
    line instead of failing after the whole evaluation."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "no plots: matplotlib is not installed (an optional extra: pip install 'timm-isomax[plots]')"
    return None


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")  # crop what a square ROC axes leaves blank
    return path


def plot_score_histograms(panels: Sequence[ScorePanel], id_name: str, ood_name: str, path: Union[str, Path]) -> Path:
    """One histogram panel per model/score: ID and OOD score densities on shared bins, the threshold that
    accepts 95% of ID, and AUROC / FPR@95 in the panel title. Returns the PNG path."""
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = _figure(4.6 * columns, 3.5 * rows + 0.7)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        id_scores, ood_scores = as_score_array(panel.id_scores, "id_scores"), as_score_array(panel.ood_scores, "ood_scores")
        bins = np.histogram_bin_edges(np.concatenate([id_scores, ood_scores]), bins=50)
        ax.hist(id_scores, bins=bins, density=True, alpha=0.55, color=ID_COLOR, label=f"ID: {id_name} (n={id_scores.size})")
        ax.hist(ood_scores, bins=bins, density=True, alpha=0.55, color=OOD_COLOR, label=f"OOD: {ood_name} (n={ood_scores.size})")
        ax.axvline(fit_threshold(id_scores, TPR_LEVEL), color="black", linestyle="--", linewidth=1,
                   label=f"threshold: {TPR_LEVEL:.0%} of ID accepted")
        metrics = ood_metrics(id_scores, ood_scores)
        ax.set_title(f"{panel.label}\nAUROC {100 * metrics['auroc']:.1f}%, FPR@95 {100 * metrics['fpr_at_95_tpr']:.1f}% (ID+)",
                     fontsize=10)
        ax.set_xlabel("score (higher = more in-distribution)")
        ax.set_ylabel("density")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    # one legend for all panels (same sets and line in each), below them where it hides no bar
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3 if columns > 1 else 1,
                  fontsize=9)
    figure.suptitle(f"OOD scores: ID {id_name} vs OOD {ood_name}")
    return _save(figure, path)


def _thin(fpr: np.ndarray, tpr: np.ndarray):
    if fpr.size <= _MAX_ROC_POINTS:
        return fpr, tpr
    keep = np.unique(np.linspace(0, fpr.size - 1, _MAX_ROC_POINTS).round().astype(int))
    return fpr[keep], tpr[keep]


def plot_roc_curves(panels: Sequence[ScorePanel], id_name: str, ood_name: str, path: Union[str, Path]) -> Path:
    """ROC curves (ID positive) of every model/score on one axes, AUROC in the legend. Returns the PNG path."""
    figure = _figure(9.0, 5.6)
    ax = figure.subplots()
    for panel in panels:
        fpr, tpr, _ = roc_curve(panel.id_scores, panel.ood_scores)
        area = ood_metrics(panel.id_scores, panel.ood_scores)["auroc"]
        ax.plot(*_thin(fpr, tpr), linewidth=1.6, label=f"{panel.label} (AUROC {100 * area:.1f}%)")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance (AUROC 50%)")
    ax.axhline(TPR_LEVEL, color="black", linestyle="--", linewidth=0.8, label=f"TPR = {TPR_LEVEL:.0%} (FPR@95)")
    ax.set_box_aspect(1)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           xlabel=f"FPR: share of OOD ({ood_name}) accepted as ID", ylabel=f"TPR: share of ID ({id_name}) accepted",
           title=f"ROC, ID positive: ID {id_name} vs OOD {ood_name}")
    # beside the axes: curves of poor scores run through the usual lower-right spot
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0, fontsize=9)
    return _save(figure, path)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "ood"


def save_plots(evaluations: Sequence, id_name: str, ood_names: Sequence[str], output: Union[str, Path]) -> List[Path]:
    """``hist_<ood>.png`` and ``roc_<ood>.png`` in ``output`` for each OOD set, every model and score of
    ``evaluations`` (:class:`timm_isomax.ood.evaluation.ModelEvaluation`) side by side; returns the paths."""
    paths = []
    for ood in ood_names:
        panels = [ScorePanel(f"{e.name} / {score}", e.id_scores[score], e.ood_scores[score][ood])
                  for e in evaluations for score in e.id_scores]
        paths.append(plot_score_histograms(panels, id_name, ood, Path(output) / f"hist_{_slug(ood)}.png"))
        paths.append(plot_roc_curves(panels, id_name, ood, Path(output) / f"roc_{_slug(ood)}.png"))
    return paths


def _one_bar_per_head(summary: Sequence[dict]) -> List[dict]:
    # a protocol whose runs chose a score on validation shows that choice per head (a dozen scores per head would
    # make bars no one can read); older protocols show every score, as their tables do
    chosen = {e["protocol"] for e in summary if e["score"] == "chosen"}
    return [e for e in summary if e["protocol"] not in chosen or e["score"] == "chosen"]


def plot_benchmark(summary: Sequence[dict], path: Union[str, Path]) -> Path:
    """Grouped bars of AUROC (mean over seeds, error bar = standard deviation), one group per protocol and
    OOD set, one bar per model and score, ID accuracy in the legend; ``summary`` from
    :func:`timm_isomax.benchmark.summarize`. Where the runs chose their score on validation, each head is drawn with
    that choice only (every score is in the tables). Returns the PNG path."""
    summary = _one_bar_per_head(summary)
    groups = list(dict.fromkeys((e["protocol"], ood) for e in summary for ood in e["ood_datasets"]))
    labels = list(dict.fromkeys(e["label"] for e in summary))
    width = 0.8 / len(labels)
    figure = _figure(max(7.0, 1.6 * len(groups) + 3.0), 4.8)
    ax = figure.subplots()
    for index, label in enumerate(labels):
        entries = {e["protocol"]: e for e in summary if e["label"] == label}
        x = [g for g, (protocol, _) in enumerate(groups) if protocol in entries]
        stats = [entries[protocol]["metrics"][ood]["auroc"] for protocol, ood in groups if protocol in entries]
        accuracies = ", ".join(f"{100 * e['accuracy']['mean']:.1f}" for e in entries.values())
        ax.bar(np.asarray(x) + (index - (len(labels) - 1) / 2) * width, [100 * s["mean"] for s in stats], width,
               yerr=[100 * s["std"] for s in stats], capsize=2, label=f"{label} (ID acc % {accuracies})")
    lowest = min(100 * (e["metrics"][ood]["auroc"]["mean"] - e["metrics"][ood]["auroc"]["std"])
                 for e in summary for ood in e["ood_datasets"])
    ax.set_ylim(max(0.0, 5 * math.floor(lowest / 5) - 5), 100.5)
    ax.set_xticks(range(len(groups)), [f"{protocol}\nvs {ood}" for protocol, ood in groups])
    ax.set_ylabel("AUROC % (ID positive), mean ± std over seeds")
    ax.set_title("OOD detection: same backbone, recipe and seeds; each head with its validation-chosen score")
    ax.grid(axis="y", alpha=0.3)
    figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    return _save(figure, path)
