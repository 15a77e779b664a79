"""Turn a trained SoftMax timm model into an IsoMax+ (or DisMax) model, with no training at all.

With unit vectors ``||f^ - p^||^2 = 2 - 2 cos(f, p)``, so IsoMax+ prototypes equal to the rows of the
SoftMax weight matrix ``W`` predict exactly like the cosine classifier ``argmax_c cos(f, W_c)`` (bias and
row norms dropped). The same holds for DisMax, whose logits add a shift common to all classes of a row (the
mean distance): faithful means the predictions are the cosine classifier's, not that the logits, probabilities or
OOD scores are the source's. IsoMax's distances depend on the norms, so it never converts this way. It is done
only when the classifier is one linear map of the pre-logits, which is checked numerically on the loaded model,
not assumed from its type. Elsewhere (distilled twin heads, MLP heads, another class count) the prototypes
are the class means of the training features when data is given, else the head starts fresh.
:class:`ConversionReport` says which happened and why.
"""
import copy as copy_module
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .._timm_compat import model_input_size
from .checkpoints import KeyMap, load_checkpoint_into, read_state_dict, remap_keys, resolve_key_map
from .factory import create_model
from .classifier import HEAD_TYPES, IsoMaxClassifier, isomax_layer_names

__all__ = ["ConversionReport", "convert_softmax_model", "linear_classifier", "class_mean_prototypes",
           "load_softmax_model", "uses_unit_vectors"]

_logger = logging.getLogger(__name__)


def uses_unit_vectors(head_type: str) -> bool:
    """Whether a ``head_type`` head compares L2-normalised features and prototypes (IsoMax+, DisMax; not IsoMax).

    For such a head, class-mean prototypes are means of unit features, and prototypes = the SoftMax classifier's
    rows reproduce the source's cosine classifier exactly (its logits fall with each class's ``sqrt(2 - 2 cos)``).

    Example:
        >>> uses_unit_vectors("dismax"), uses_unit_vectors("isomax")
        (True, False)
    """
    if head_type not in HEAD_TYPES:
        raise ValueError(f"head_type must be one of {sorted(HEAD_TYPES)}, got {head_type!r}.")
    return HEAD_TYPES[head_type].normalize


@dataclass(frozen=True)
class ConversionReport:
    """How the head of a converted model was initialised.

    ``method`` is ``"classifier"`` (prototypes = SoftMax weight rows), ``"class_means"`` (mean training
    features per class) or ``"fresh"`` (random init); ``reason`` says why.
    """

    method: str
    reason: str


def _probe_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    channels, height, width = model_input_size(model)
    channels = getattr(model, "in_chans", None) or channels
    parameter = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, channels, height, width, generator=generator).to(parameter.device, parameter.dtype)


@torch.no_grad()
def linear_classifier(model: nn.Module) -> Tuple[Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]], str]:
    """``((W, b), reason)`` if ``model``'s logits are one linear map of its pre-logits, else ``(None, reason)``.

    Checked on the loaded weights: ``forward_head(f) == pre_logits(f) @ W.T + b`` on a probe batch.
    """
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Linear):
        weight, bias = classifier.weight, classifier.bias
    elif isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1) and classifier.groups == 1:
        weight, bias = classifier.weight.flatten(1), classifier.bias  # 1x1 conv heads (dla, dpn, resnetv2)
    else:
        kind = "a tuple of heads" if isinstance(classifier, tuple) else type(classifier).__name__
        return None, f"the classifier is {kind}, not a single linear layer"
    was_training = model.training
    model.eval()
    try:
        features = model.forward_features(_probe_input(model))
        logits = model.forward_head(features).float()
        pre_logits = model.forward_head(features, pre_logits=True).float()
    finally:
        model.train(was_training)
    if pre_logits.ndim != 2 or pre_logits.shape[1] != weight.shape[1]:
        return None, f"the pre-logits {tuple(pre_logits.shape)} do not feed the classifier {tuple(weight.shape)}"
    expected = F.linear(pre_logits, weight.float(), None if bias is None else bias.float())
    tolerance = 1e-3 * max(1.0, expected.abs().max().item())
    if logits.shape != expected.shape or (logits - expected).abs().max().item() > tolerance:
        return None, "the logits are not the classifier applied to the pre-logits (the head does more)"
    return (weight.detach().clone(), None if bias is None else bias.detach().clone()), "single linear classifier"


@torch.no_grad()
def class_mean_prototypes(backbone: nn.Module, batches: Iterable, num_classes: int, normalize: bool = True,
                          device: Optional[torch.device] = None) -> torch.Tensor:
    """Mean pre-logit feature of each class over ``batches`` of ``(images, labels)``, shape (C, D).

    With ``normalize`` (IsoMax+), features are L2-normalised before averaging, as the head compares
    directions. Raises if a class has no sample.
    """
    was_training = backbone.training
    backbone.eval()
    device = device or next(backbone.parameters()).device
    sums, counts = None, torch.zeros(num_classes, dtype=torch.float64)
    try:
        for images, labels in batches:
            features = backbone.forward_head(backbone.forward_features(images.to(device)), pre_logits=True).double().cpu()
            if normalize:
                features = F.normalize(features, dim=1)
            labels = torch.as_tensor(labels).long()
            if sums is None:
                sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
            sums.index_add_(0, labels, features)
            counts += torch.bincount(labels, minlength=num_classes).double()
    finally:
        backbone.train(was_training)
    if sums is None or (counts == 0).any():
        empty = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"no training samples for classes {empty[:10]}: class-mean prototypes need every class.")
    return (sums / counts[:, None]).float()


def convert_softmax_model(model: nn.Module, num_classes: Optional[int] = None, head_type: str = "isomaxplus",
                          data: Optional[Iterable] = None, distance_mode: str = "matmul",
                          ood_config: Optional[dict] = None, copy: bool = True) -> IsoMaxClassifier:
    """Convert a timm SoftMax model (in memory, weights loaded) into an IsoMax+ (or IsoMax, or DisMax) model.

    Args:
        model: a timm classification model; it stays a working SoftMax classifier (the conversion works on a
            copy), so the source and its conversion can be compared side by side.
        num_classes: classes of the new head (default: the source's).
        head_type: ``"isomaxplus"`` (default), ``"isomax"`` or ``"dismax"``.
        data: batches of ``(images, labels)`` for class-mean prototypes where the classifier cannot be used.
        distance_mode, ood_config: as for :class:`IsoMaxClassifier`.
        copy: ``False`` reuses ``model``'s backbone instead of copying it (no second copy of the weights in
            memory), which removes ``model``'s classifier: ``model(x)`` then returns pre-logit features.

    Returns:
        The IsoMax model; ``model.conversion`` is a :class:`ConversionReport`.

    Example:
        >>> softmax = timm.create_model("resnet50.a1_in1k", pretrained=True)
        >>> isomax = convert_softmax_model(softmax)
        >>> isomax.conversion.method
        'classifier'
    """
    if isinstance(model, IsoMaxClassifier):
        raise ValueError("the model already has an IsoMax head; convert_softmax_model takes SoftMax models.")
    unit_vectors = uses_unit_vectors(head_type)  # also checks the name
    if copy:
        model = copy_module.deepcopy(model)
    linear, reason = linear_classifier(model)
    source_classes = model.num_classes
    num_classes = num_classes or source_classes
    probe = _probe_input(model)
    model.eval()
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(probe), pre_logits=True)
    model.reset_classifier(0)
    with torch.no_grad():
        # some heads rebuild more than the classifier on reset: the pre-logits must survive it
        if not torch.allclose(model(probe), pre_logits, rtol=1e-4, atol=1e-5):
            raise ValueError(f"{type(model).__name__}.reset_classifier(0) changes its pre-logits; convert it by hand.")
    isomax = IsoMaxClassifier(model, num_classes, head_type=head_type, distance_mode=distance_mode, ood_config=ood_config)
    source_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    isomax.pretrained_cfg = isomax.default_cfg = dict(
        source_cfg, **isomax_layer_names(source_cfg.get("first_conv")),
        architecture=f"{source_cfg['architecture']}_{head_type}" if source_cfg.get("architecture") else None)
    if num_classes != source_classes:
        why = f"{num_classes} classes asked, the source has {source_classes}"
    elif not unit_vectors:
        why = f"the {head_type} head's unnormalised distances do not reproduce a linear classifier"
    elif linear is None:
        why = reason
    else:
        why = None
    if why is None:
        with torch.no_grad():
            isomax.head.prototypes.copy_(linear[0])
        report = ConversionReport("classifier", f"prototypes = rows of the SoftMax classifier ({reason})")
    elif data is not None:
        with torch.no_grad():
            isomax.head.prototypes.copy_(class_mean_prototypes(model, data, num_classes, unit_vectors))
        report = ConversionReport("class_means", f"prototypes = class means of the data, because {why}")
    else:
        report = ConversionReport("fresh", f"fresh head (no data given for class means), because {why}")
    isomax.conversion = report
    _logger.info("converted %s: %s", type(model).__name__, report.reason)
    return isomax


def load_softmax_model(model_name: str, checkpoint: Optional[str] = None, key_map: KeyMap = None,
                       **kwargs: Any) -> nn.Module:
    """A SoftMax timm model with its trained weights: a timm name (tag, ``hf-hub:``, ``local-dir:``) with
    ``pretrained=True``, or an architecture plus a ``checkpoint`` file read through ``key_map``.

    The class count of a checkpoint is read from its classifier unless ``num_classes`` is given.

    Example:
        >>> model = load_softmax_model("cifar_resnet20", "resnet20-12fca82f.th", key_map="akamaster-cifar-resnet")
    """
    if checkpoint is None:
        # one-line errors where the weights cannot be downloaded (timm's path retries for ~50 s)
        return create_model(model_name, pretrained=True, **kwargs)
    state_dict = read_state_dict(checkpoint)
    if "num_classes" not in kwargs and resolve_key_map(key_map) != "by_order":
        classifier = timm.models.get_pretrained_cfg_value(timm.models.get_arch_name(model_name), "classifier")
        weight = remap_keys(state_dict, key_map).get(f"{classifier}.weight") if isinstance(classifier, str) else None
        if weight is not None:
            kwargs["num_classes"] = int(weight.shape[0])
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    load_checkpoint_into(model, state_dict, key_map)
    return model
