"""The HTML of ``timm-isomax demo``'s page (:mod:`timm_isomax.app`): a card per model and the score histogram as
inline SVG, so the page draws without a plotting library or anything fetched from outside.

Every number a reader (or a browser test) needs is also an attribute of the card: ``data-verdict``, ``data-score``,
``data-threshold``, ``data-top-class``, ``data-image``::

    html = model_card(demo_model, demo_model.explain(image))
"""
from html import escape
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..ood.score_summary import histogram

__all__ = ["CSS", "header", "footer", "placeholder_card", "model_card", "histogram_svg"]

CSS = """
.tim-card {border: 1px solid #d0d7de; border-radius: 10px; padding: 14px 16px; background: #fff; color: #1f2328;}
.tim-title {font-size: 1.05em; font-weight: 600; margin-bottom: 2px;}
.tim-sub {color: #59636e; font-size: 0.85em; word-break: break-all; margin-bottom: 10px;}
.tim-verdict {display: inline-block; padding: 5px 12px; border-radius: 6px; font-weight: 700; letter-spacing: 0.03em;
              margin-bottom: 10px;}
.tim-verdict.in {background: #dafbe1; color: #116329; border: 1px solid #4ac26b;}
.tim-verdict.out {background: #ffebe9; color: #a40e26; border: 1px solid #ff8182;}
.tim-verdict.none {background: #f6f8fa; color: #59636e; border: 1px solid #d0d7de;}
.tim-row {display: flex; align-items: center; gap: 8px; margin: 3px 0; font-size: 0.92em;}
.tim-label {width: 110px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;}
.tim-bar {flex: 1; background: #eef1f4; border-radius: 4px; height: 14px; overflow: hidden;}
.tim-bar > div {background: #6e7ff3; height: 100%;}
.tim-pct {width: 58px; text-align: right; font-variant-numeric: tabular-nums;}
.tim-facts {margin: 10px 0 6px; font-size: 0.92em; line-height: 1.45;}
.tim-facts code {background: #f6f8fa; padding: 0 4px; border-radius: 4px;}
.tim-note {color: #59636e; font-size: 0.8em; margin-top: 4px;}
.tim-header h1 {font-size: 1.5em; margin: 0 0 4px;}
.tim-header p {margin: 0; color: #59636e;}
#demo-image img, #demo-examples img {image-rendering: pixelated;}
"""

# colours of the histogram: ID validation, then one per OOD set
_ID_COLOUR = "#3b82f6"
_OOD_COLOURS = ("#f97316", "#a855f7", "#14b8a6", "#eab308")
_BINS = 40


def header(models: Sequence[Any]) -> str:
    return ("<div class='tim-header'><h1>What does this model call out-of-distribution?</h1>"
            "<p>Upload an image or pick an example: each model gives its top classes, its OOD score and whether that "
            "score passes the model's threshold, drawn among the scores of the images it was validated on.</p></div>")


def footer(models: Sequence[Any]) -> str:
    return ("<div class='tim-note'>timm-isomax demo. Probabilities: softmax of the logits. OOD scores: higher = more "
            "in-distribution; below the threshold = out-of-distribution. Served from this computer only.</div>")


def _title(model: Any) -> str:
    return (f"<div class='tim-title'>{escape(model.head)} model</div>"
            f"<div class='tim-sub'>{escape(model.name)}</div>")


def placeholder_card(model: Any) -> str:
    return (f"<div class='tim-card' data-verdict=''>{_title(model)}"
            "<div class='tim-verdict none'>waiting for an image</div>"
            f"{_facts_threshold(model)}{histogram_svg(model, None)}{_threshold_note(model)}{_sources(model)}</div>")


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%" if 0.001 <= value <= 0.999 or value in (0.0, 1.0) else f"{100 * value:.2g}%"


def _facts_threshold(model: Any) -> str:
    threshold = "no threshold" if model.threshold is None else f"threshold <b>{model.threshold:.4g}</b>"
    return f"<div class='tim-facts'>OOD score <code>{escape(model.score)}</code>, {threshold}.</div>"


def _threshold_note(model: Any) -> str:
    return f"<div class='tim-note'>Threshold: {escape(model.threshold_note)}.</div>"


def _sources(model: Any) -> str:
    lines = [f"Histogram, ID: {model.id_distribution.source}." if model.id_distribution is not None else
             "No ID distribution: the model records none; give --id-dataset to draw one."]
    lines += [f"Histogram, OOD: {d.source}." for d in model.ood_distributions]
    return "".join(f"<div class='tim-note'>{escape(line)}</div>" for line in lines)


def model_card(model: Any, result: Dict[str, Any]) -> str:
    """The card of one model's result (:meth:`timm_isomax.app.DemoModel.explain`)."""
    verdict = result["verdict"]
    kind = "none" if verdict is None else ("out" if result["is_ood"] else "in")
    badge = {"none": "no threshold: no verdict", "in": "IN-DISTRIBUTION", "out": "OUT-OF-DISTRIBUTION"}[kind]
    top = result["top_classes"]
    rows = "".join(f"<div class='tim-row'><span class='tim-label'>{escape(c['label'])}</span><div class='tim-bar'>"
                   f"<div style='width:{100 * c['probability']:.1f}%'></div></div>"
                   f"<span class='tim-pct'>{100 * c['probability']:.1f}%</span></div>" for c in top)
    facts = [f"OOD score <code>{escape(result['score_name'])}</code> = <b>{result['score']:.4g}</b>"]
    if result["threshold"] is not None:
        side = "below" if result["is_ood"] else "at or above"
        facts[0] += f", {side} the threshold <b>{result['threshold']:.4g}</b>."
    if result["id_share_below"] is not None:
        facts.append(f"Lower than {_percent(1 - result['id_share_below'])} of the ID scores in the histogram.")
    facts += [f"Higher than {_percent(share)} of {escape(name)}." for name, share in result["ood_share_below"].items()]
    attributes = (f"data-verdict='{verdict or ''}' data-score='{result['score']!r}' data-threshold='{result['threshold']!r}' "
                  f"data-top-class='{escape(top[0]['label'])}' data-top-probability='{top[0]['probability']!r}' "
                  f"data-image='{result['image_sha256']}'")
    return (f"<div class='tim-card' {attributes}>{_title(model)}<div class='tim-verdict {kind}'>{badge}</div>"
            f"<div class='tim-facts'>Top classes ({escape(model.head)} probabilities):</div>{rows}"
            f"<div class='tim-facts'>{'<br>'.join(facts)}</div>{histogram_svg(model, result['score'])}"
            f"{_threshold_note(model)}{_sources(model)}</div>")


def _range(model: Any, score: Optional[float]) -> Optional[np.ndarray]:
    points = [v for d in [model.id_distribution, *model.ood_distributions] if d is not None
              for v in (d.summary["percentiles"][0], d.summary["percentiles"][-1])]
    points += [v for v in (score, model.threshold) if v is not None]
    if not points:
        return None
    low, high = min(points), max(points)
    pad = 0.04 * (high - low) or 0.5  # one point alone: a unit-wide axis around it
    return np.linspace(low - pad, high + pad, _BINS + 1)


def histogram_svg(model: Any, score: Optional[float], width: int = 470, height: int = 190) -> str:
    """The ID (and OOD) score distributions as filled step curves (each scaled to its own peak), the threshold as a
    dashed line (OOD side shaded) and ``score`` as a solid marker."""
    edges = _range(model, score)
    if edges is None:
        return ""
    left, right, top, bottom = 10, 10, 26, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    x = lambda v: left + plot_w * (v - edges[0]) / (edges[-1] - edges[0])  # noqa: E731
    parts: List[str] = []
    if model.threshold is not None:
        parts.append(f"<rect x='{left}' y='{top}' width='{x(model.threshold) - left:.1f}' height='{plot_h}' "
                     "fill='#fee2e2' opacity='0.6'/>")
    legend = []
    sets = [(model.id_distribution, _ID_COLOUR)] if model.id_distribution is not None else []
    sets += list(zip(model.ood_distributions, _OOD_COLOURS))
    # drawn OOD first, ID last (on top): where a score piles up at one end for both, ID stays visible
    for index, (distribution, colour) in reversed(list(enumerate(sets))):
        mass = histogram(distribution.summary, edges)
        heights = mass / mass.max() if mass.max() > 0 else mass
        path = [f"M{x(edges[0]):.1f},{top + plot_h}"]
        for i, h in enumerate(heights):
            y = top + plot_h * (1 - 0.95 * h)
            path.append(f"L{x(edges[i]):.1f},{y:.1f}L{x(edges[i + 1]):.1f},{y:.1f}")
        path.append(f"L{x(edges[-1]):.1f},{top + plot_h}Z")
        parts.append(f"<path d='{''.join(path)}' fill='{colour}' fill-opacity='0.35' stroke='{colour}' stroke-width='1.2'/>")
        legend.append(f"<rect x='{left + 150 * index}' y='6' width='11' height='11' fill='{colour}' fill-opacity='0.6'/>"
                      f"<text x='{left + 150 * index + 15}' y='16'>{escape(distribution.name)[:22]}</text>")
    if model.threshold is not None:
        tx = x(model.threshold)
        parts.append(f"<line x1='{tx:.1f}' x2='{tx:.1f}' y1='{top}' y2='{top + plot_h}' stroke='#b91c1c' "
                     "stroke-dasharray='5,3' stroke-width='1.5'/>")
        parts.append(f"<text x='{tx - 3:.1f}' y='{top + 11}' fill='#b91c1c' text-anchor='end'>OOD &#8592; threshold</text>")
    if score is not None:
        sx = x(score)
        parts.append(f"<line x1='{sx:.1f}' x2='{sx:.1f}' y1='{top - 4}' y2='{top + plot_h}' stroke='#111827' stroke-width='2.5'/>"
                     f"<path d='M{sx - 6:.1f},{top - 10}L{sx + 6:.1f},{top - 10}L{sx:.1f},{top - 2}Z' fill='#111827'/>")
        anchor = "end" if sx > left + plot_w / 2 else "start"
        parts.append(f"<text x='{sx + (-8 if anchor == 'end' else 8):.1f}' y='{top + plot_h / 2:.1f}' text-anchor='{anchor}' "
                     f"font-weight='600'>this image</text>")
    axis = f"<line x1='{left}' x2='{left + plot_w}' y1='{top + plot_h}' y2='{top + plot_h}' stroke='#6b7280'/>"
    ticks = "".join(f"<text x='{x(v):.1f}' y='{top + plot_h + 14}' text-anchor='middle'>{v:.3g}</text>"
                    for v in np.linspace(edges[0], edges[-1], 6)[1:-1])
    caption = (f"<text x='{left + plot_w / 2}' y='{height - 4}' text-anchor='middle' fill='#59636e'>OOD score "
               f"{escape(model.score)} (higher = more in-distribution)</text>")
    return (f"<svg class='tim-hist' width='100%' viewBox='0 0 {width} {height}' font-size='11' "
            f"font-family='sans-serif' role='img'>{''.join(parts)}{axis}{ticks}{''.join(legend)}{caption}</svg>")
