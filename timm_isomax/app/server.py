"""The library side of ``timm-isomax demo``: what a model says about one image, and a local web page that shows it.

For each model: the top classes with their probabilities, the OOD score the model records (``ood_config``), the
in/out verdict against its threshold and what that threshold means (the share of ID validation images it accepts),
and the image's score drawn on the ID validation scores (and the OOD sets' scores where given). Two models show the
same image side by side, e.g. a SoftMax fine-tune beside its IsoMax+ twin.

The models and their numbers are plain Python (:func:`load_demo_model`, :meth:`DemoModel.explain`); only
:func:`build_app` needs gradio (``pip install 'timm-isomax[app]'``)::

    from timm_isomax.app import build_app, load_demo_model
    from timm_isomax.ood.evaluation import load_eval_set
    id_set = load_eval_set("../shared/data/mnist", "test", limit=1000)
    ood = [load_eval_set("../shared/data/notmnist", "test", limit=1000)]
    models = [load_demo_model("local-dir:out/mnist_isomaxplus", id_set, ood)]
    models[0].explain(PIL.Image.open("digit.png"))["verdict"]          # 'in-distribution'
    launch_app(build_app(models, example_images(id_set, ood, 4, "out/examples")), port=7860)
"""
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data import dataset_for_model, find_columns, model_transform
from ..models.classifier import HEAD_TITLES, IsoMaxClassifier
from ..ood.deploy import fit_threshold, ood_scores, recorded_ood_config
from ..ood.evaluation import EvalSet, load_model
from ..ood.metrics import TPR_LEVEL
from ..ood.score_summary import share_below, summarize_scores, summary_matches
from . import page as app_page

__all__ = ["INSTALL_HINT", "gradio_problem", "Distribution", "DemoModel", "load_demo_model", "example_images",
           "build_app", "launch_app", "explain_all", "image_digest", "OFFLINE_ENVIRONMENT"]

INSTALL_HINT = "pip install 'timm-isomax[app]'"
# gradio phones home (usage analytics, a version check) unless told not to; the page must work offline
OFFLINE_ENVIRONMENT = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
# the score of a model that records none (a plain SoftMax model): its maximum softmax probability
FALLBACK_SCORE = "msp"
TOP_CLASSES = 5


def gradio_problem() -> Optional[str]:
    """Why the web page cannot be built here (gradio missing), in one line, or None."""
    os.environ.update(OFFLINE_ENVIRONMENT)  # before gradio's first import: it reads them then
    try:
        import gradio  # noqa: F401
    except ImportError:
        return f"timm-isomax demo needs gradio, which is not installed: {INSTALL_HINT}"
    return None


@dataclass
class Distribution:
    """Scores of a set of images, as a percentile summary (:mod:`timm_isomax.ood.score_summary`), and where from."""

    name: str
    summary: Dict[str, Any]
    source: str


@dataclass
class DemoModel:
    """One model, with the score, threshold and ID distribution the page shows for it (and where each comes from)."""

    name: str
    model: nn.Module
    score: str
    threshold: Optional[float]
    threshold_note: str
    id_distribution: Optional[Distribution]
    ood_distributions: List[Distribution] = field(default_factory=list)

    @property
    def head(self) -> str:
        return HEAD_TITLES[self.model.head_type] if isinstance(self.model, IsoMaxClassifier) else "SoftMax"

    @property
    def label_names(self) -> Optional[List[str]]:
        return getattr(self.model, "pretrained_cfg", {}).get("label_names")

    def explain(self, image: Image.Image) -> Dict[str, Any]:
        """Everything the page says about ``image``, as numbers: top classes (softmax of the logits), the OOD score
        (:func:`timm_isomax.ood_scores`), the verdict against the threshold, and where the score lies among the ID
        (and OOD) images.

        Example:
            >>> result = demo_model.explain(Image.open("digit.png"))
            >>> result["verdict"], result["score"], result["top_classes"][0]
            ('in-distribution', -0.41, {'index': 7, 'label': '7', 'probability': 0.31})
        """
        transform, mode = model_transform(self.model)
        with torch.no_grad():
            logits = self.model(transform(image.convert(mode)).unsqueeze(0)).float()[0]
        probabilities = torch.softmax(logits, dim=0)
        top = torch.topk(probabilities, min(TOP_CLASSES, len(probabilities)))
        names = self.label_names
        score = float(ood_scores(self.model, image, score=self.score)[0])  # the library's own, for the same image
        is_ood = None if self.threshold is None else bool(score < self.threshold)
        return dict(
            model=self.name, head=self.head, score_name=self.score, score=score, threshold=self.threshold,
            is_ood=is_ood, verdict=None if is_ood is None else ("out-of-distribution" if is_ood else "in-distribution"),
            top_classes=[dict(index=int(i), label=str(names[i]) if names and i < len(names) else str(int(i)),
                              probability=float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())],
            id_share_below=None if self.id_distribution is None else share_below(self.id_distribution.summary, score),
            ood_share_below={d.name: share_below(d.summary, score) for d in self.ood_distributions},
            image_sha256=image_digest(image))


def image_digest(image: Image.Image) -> str:
    """The first 12 hex digits of the SHA-256 of an image's mode, size and pixels: the page shows it, so a test can
    tell which image a result is for (and that the upload arrived unchanged)."""
    return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()[:12]


def _set_scores(model: nn.Module, eval_set: EvalSet, score: str, batch_size: int = 128) -> np.ndarray:
    # through timm_isomax.ood_scores, batch by batch: the same numbers the page gives for each of these images
    loader = torch.utils.data.DataLoader(dataset_for_model(model, eval_set.dataset), batch_size=batch_size)
    return torch.cat([ood_scores(model, images, score=score) for images, _ in loader]).numpy()


def _set_words(eval_set: EvalSet) -> str:
    return f"{eval_set.name} {eval_set.split} ({len(eval_set.dataset)} images)"


def load_demo_model(name: str, id_set: Optional[EvalSet] = None, ood_sets: Sequence[EvalSet] = (),
                    device: str = "cpu") -> DemoModel:
    """Load ``name`` (anything ``timm-isomax evaluate --model`` takes) and find what the page shows for it.

    Score and threshold: the model's record (``ood_config``, or its run's ``training/evaluation.json``); without a
    threshold, one fitted here on ``id_set`` to accept 95% of it. ID distribution: the percentiles recorded with the
    threshold at training time where they still match it, else the scores of ``id_set``. OOD distributions: the
    scores of each of ``ood_sets``. Unknown names and missing folders are one-line ``ValueError`` / ``OSError``.
    """
    model = load_model(name).to(device)
    record, where = recorded_ood_config(model)
    score = record.get("score") or FALLBACK_SCORE
    threshold = record.get("threshold")
    id_scores = _set_scores(model, id_set, score) if id_set is not None else None
    if threshold is not None:
        tpr = record.get("tpr") or TPR_LEVEL
        fitted_on = f", fitted on {record['fitted_on']}" if record.get("fitted_on") else ""
        note = f"recorded in {where}{fitted_on}: it accepts {tpr:.0%} of the ID validation images (TPR {tpr:.0%})"
    elif id_scores is not None:
        threshold = fit_threshold(id_scores, TPR_LEVEL)
        note = (f"the model records none: fitted here on {_set_words(id_set)} to accept {TPR_LEVEL:.0%} of it "
                f"(TPR {TPR_LEVEL:.0%})")
    else:
        note = "the model records none; give --id-dataset to fit one (accepting 95% of it)"
    summary = record.get("id_scores")
    if summary_matches(summary, score, record.get("threshold")):
        fitted_on = f" ({record['fitted_on']})" if record.get("fitted_on") else ""
        id_distribution = Distribution("ID validation", summary,
                                       f"recorded with the model at training time: {summary['images']} ID validation "
                                       f"images{fitted_on}")
    elif id_scores is not None:
        id_distribution = Distribution(id_set.name, summarize_scores(id_scores, score, threshold),
                                       f"computed here from --id-dataset: {_set_words(id_set)}")
    else:
        id_distribution = None
    ood = [Distribution(s.name, summarize_scores(_set_scores(model, s, score), score), f"--ood-dataset: {_set_words(s)}")
           for s in ood_sets]
    return DemoModel(name, model, score, threshold, note, id_distribution, ood)


def example_images(id_set: Optional[EvalSet], ood_sets: Sequence[EvalSet], per_set: int,
                   folder: os.PathLike) -> List[Tuple[str, str]]:
    """``(path, caption)`` of ``per_set`` images of each set, written as PNG (lossless, so the page's numbers are those
    of the dataset's pixels) into ``folder``: the page's example gallery."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for kind, eval_set in ([("ID", id_set)] if id_set is not None else []) + [("OOD", s) for s in ood_sets]:
        image_column, label_column = find_columns(eval_set.dataset)
        names = getattr(eval_set.dataset.features.get(label_column), "names", None) if label_column else None
        for row in range(min(per_set, len(eval_set.dataset))):
            item = eval_set.dataset[row]
            label = item[label_column] if label_column else -1
            caption = f"{kind} {names[label]}" if names and label >= 0 else f"{kind} {eval_set.name}"
            path = folder / f"{kind.lower()}_{eval_set.name}_{row}.png"
            item[image_column].save(path)
            examples.append((str(path), caption))
    return examples


def explain_all(models: Sequence[DemoModel], image: Optional[Image.Image]) -> Tuple[Any, ...]:
    """The page's outputs for ``image``: one HTML card per model, then the numbers of all of them (the JSON the
    page shows under "numbers", and what the API returns)."""
    if image is None:
        return (*[app_page.placeholder_card(m) for m in models], {})
    results = [m.explain(image) for m in models]
    return (*[app_page.model_card(m, r) for m, r in zip(models, results)], {"models": results})


def build_app(models: Sequence[DemoModel], examples: Sequence[Tuple[str, str]] = ()):
    """The gradio Blocks of the page (gradio imported here: the rest of this module runs without it).

    Example:
        >>> launch_app(build_app(models, examples), port=7860)   # serves it on http://127.0.0.1:7860
    """
    problem = gradio_problem()
    if problem:
        raise ImportError(problem)
    import gradio as gr

    with gr.Blocks(title="timm-isomax demo", analytics_enabled=False) as app:
        gr.HTML(app_page.header(models))
        with gr.Row():
            with gr.Column(scale=1, min_width=360):
                # image_mode=None: the image as uploaded (a grey digit stays grey); PNG, never a lossy format
                image = gr.Image(type="pil", image_mode=None, format="png", sources=["upload", "clipboard"],
                                 label="Image", height=240, elem_id="demo-image")
                if examples:
                    gallery = gr.Gallery(list(examples), label="Examples: click one", columns=3, height="auto",
                                         allow_preview=False, object_fit="contain",
                                         interactive=False, elem_id="demo-examples")

                    def pick(event: gr.SelectData) -> str:  # gradio passes the click by this annotation
                        return examples[event.index][0]

                    # a picked example becomes the image, whose change event below classifies it
                    gallery.select(pick, inputs=None, outputs=image, api_visibility="private")
            cards = []
            for index, model in enumerate(models):
                with gr.Column(scale=2, min_width=340):
                    cards.append(gr.HTML(app_page.placeholder_card(model), elem_id=f"demo-card-{index}"))
        with gr.Accordion("Numbers (what the API returns)", open=False):
            numbers = gr.JSON(label="per model", elem_id="demo-numbers")
        gr.HTML(app_page.footer(models))
        image.change(lambda picture: explain_all(models, picture), inputs=image, outputs=[*cards, numbers],
                     api_name="classify")
    return app


def launch_app(app, port: Optional[int] = None, block: bool = True) -> str:
    """Serve ``app`` (:func:`build_app`) on 127.0.0.1 only, with no share link and nothing fetched from outside;
    returns its URL (``block=False`` returns at once, the server running in a thread)."""
    app.launch(server_name="127.0.0.1", server_port=port, share=False, inbrowser=False, ssr_mode=False,
               prevent_thread_lock=True, quiet=True, css=app_page.CSS, footer_links=["api"])
    url = app.local_url
    print(f"timm-isomax demo: open {url} in a browser (Ctrl+C stops it)", flush=True)
    if block:
        app.block_thread()
    return url
