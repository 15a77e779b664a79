"""SoftMax's standard post-hoc OOD detectors on a timm model's pre-logit features, from pytorch-ood.

The detectors themselves are pytorch-ood's (``pip install 'timm-isomax[posthoc]'``, tested with 0.4.0):
this module only feeds them features already extracted from a timm model
(``model.forward_head(model.forward_features(x), pre_logits=True)``, shape ``(N, D)``), with the model's
linear classifier (``model.get_classifier()``: weight ``W`` of shape ``(C, D)``, bias ``b``) given as
tensors, and turns their outlier scores into this package's convention: **higher = more in-distribution**.

Notation: ``f`` the pre-logit features of an image, ``logits(f) = W f + b``,
``energy(f) = logsumexp_c logits(f)_c``; the fit set is the training images' features (no augmentation)
with their labels.

``vim`` -- Virtual-logit Matching (Wang et al., *ViM: Out-Of-Distribution with Virtual-logit Matching*,
    CVPR 2022; pytorch-ood ``ViM``)::

        score(f) = energy(f) - alpha * || P_res (f - u) ||

    ``u = -pinv(W) b`` (the origin where all logits vanish); ``P_res`` projects onto the eigenvectors of
    the uncentred covariance ``mean_i (f_i - u)(f_i - u)^T`` of the fit set outside its ``d`` largest;
    ``alpha = mean_i max_c logits(f_i)_c / mean_i ||P_res (f_i - u)||`` over the fit set. The principal
    dimension follows the ViM authors' code (haoqiwang/vim, ``benchmark.py``): ``d = 1000`` for
    ``D >= 2048`` (ResNet-50, BiT), ``d = 512`` for ``768 <= D < 2048`` (ViT-B); narrower features take
    ``d = D // 2`` (OpenOOD's ``dim: 256`` for the 512-wide CIFAR ResNet-18, and pytorch-ood's own
    fallback), so ``d < D`` always (see :func:`vim_dimension`).

``mahalanobis`` -- class-conditional Gaussians with a shared covariance (Lee et al., *A Simple Unified
    Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks*, NeurIPS 2018;
    pytorch-ood ``Mahalanobis``, on the features only: no input preprocessing, i.e. eps = 0)::

        score(f) = -min_c (f - mu_c)^T Sigma^-1 (f - mu_c)

    ``mu_c`` the class means and ``Sigma = 1/N sum_i (f_i - mu_{y_i})(f_i - mu_{y_i})^T`` the shared
    (maximum-likelihood) covariance of the fit set. pytorch-ood 0.4.0 returns half this distance under
    the *unnormalised* scatter matrix (``d^2 / 2N``, with a ``1e-6`` ridge on the scatter matrix); the
    adapter multiplies by ``2N`` so the score is the paper's (the ranking, hence AUROC / FPR, is the same).
    Fitted in float64 (pytorch-ood allocates its means and covariance in torch's default dtype).

``react`` -- Rectified Activations (Sun et al., *ReAct: Out-of-distribution Detection With Rectified
    Activations*, NeurIPS 2021; pytorch-ood ``ReAct``)::

        score(f) = energy(min(f, c))          i.e. logsumexp(W min(f, c) + b)

    ``c`` the 90th percentile of all the fit set's pre-logit activations (ReAct's default, also OpenOOD's
    ``percentile: 90``), computed with ``numpy.percentile`` (linear interpolation).

``ash`` -- Activation Shaping (Djurisic et al., *Extremely Simple Activation Shaping for
    Out-of-Distribution Detection*, ICLR 2023; pytorch-ood ``ASH``), the variant OpenOOD runs: **ASH-B at
    the 90th percentile** (OpenOOD ``configs/postprocessors/ash.yml``: ``percentile: 90``;
    ``openood/networks/ash_net.py`` applies ``ash_b`` to the pooled penultimate features, as here)::

        score(f) = energy(a(f)),   a(f)_j = sum_i f_i / k  if f_j is among the k largest of f, else 0

    ``k = D - round(0.9 D)`` (e.g. 6 of ResNet-20's 64, 205 of ResNet-50's 2048). No fitting. ASH and
    ReAct were designed for non-negative (post-ReLU) features; on pre-logits that can be negative (e.g.
    a ViT's normalised class token) they still run but are outside what the papers evaluated.

Precision: Mahalanobis, ReAct and ASH score in float64; pytorch-ood's ViM casts its inputs to float32.
Scores come back as float64 either way. :meth:`FittedDetector.score` scores in chunks
(:data:`SCORE_CHUNK` rows), so large query sets (10,000 x 2048 features) do not blow the memory.

Example:
    >>> head = model.get_classifier()
    >>> detector = fit_posthoc("vim", train_features, train_labels, head.weight, head.bias)
    >>> id_scores = detector.score(test_features)  # float64, higher = more in-distribution
"""
import contextlib
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch

__all__ = ["POSTHOC_DETECTORS", "FittedDetector", "fit_posthoc", "vim_dimension"]

POSTHOC_DETECTORS: Tuple[str, ...] = ("vim", "mahalanobis", "react", "ash")

#: ReAct's clipping percentile (a fraction, as pytorch-ood takes it): the paper's default.
REACT_PERCENTILE = 0.90
#: The ASH variant and pruning percentile OpenOOD uses (``ash_b``, ``percentile: 90``).
ASH_VARIANT = "ash-b"
ASH_PERCENTILE = 0.90
#: Rows scored at once by :meth:`FittedDetector.score`.
SCORE_CHUNK = 1024

_INSTALL_HINT = "pip install 'timm-isomax[posthoc]'"
_NEEDS_CLASSIFIER = ("vim", "react", "ash")


def vim_dimension(width: int) -> int:
    """ViM's principal-subspace dimension ``d`` for features of width ``D`` (always ``d < D``).

    1000 for ``D >= 2048`` and 512 for ``D >= 768`` (the ViM authors' code and paper), otherwise ``D // 2``.

    Example:
        >>> vim_dimension(2048), vim_dimension(768), vim_dimension(64)
        (1000, 512, 32)
    """
    if width >= 2048:
        return 1000
    if width >= 768:
        return 512
    return width // 2


class FittedDetector:
    """A pytorch-ood detector fitted on pre-logit features, scoring with higher = more in-distribution.

    Attributes:
        name: one of :data:`POSTHOC_DETECTORS`.
        detector: the underlying pytorch-ood detector object.
        params: the fitted or chosen hyperparameters (e.g. ``{"d": 32, "alpha": ...}`` for ViM,
            ``{"threshold": ..., "percentile": 0.9}`` for ReAct), for reports.
    """

    def __init__(self, name: str, detector: Any, predict: Callable[[torch.Tensor], torch.Tensor],
                 width: int, dtype: torch.dtype, scale: float = 1.0, params: Optional[Dict[str, Any]] = None):
        self.name = name
        self.detector = detector
        self.params = dict(params or {})
        self._predict = predict  # features chunk (B, D) -> pytorch-ood outlier scores (B,), higher = more OOD
        self._width = width
        self._dtype = dtype
        self._scale = scale

    def __repr__(self) -> str:
        return f"FittedDetector(name={self.name!r}, params={self.params})"

    @torch.no_grad()
    def score(self, features: torch.Tensor) -> torch.Tensor:
        """In-distribution scores (float64, shape ``(M,)``, on the CPU) of pre-logit features ``(M, D)``."""
        if features.dim() != 2 or features.shape[1] != self._width:
            raise ValueError(f"features must have shape (M, {self._width}), got {tuple(features.shape)}.")
        if features.shape[0] == 0:
            return torch.empty(0, dtype=torch.float64)
        scores = [self._predict(chunk.to(self._dtype)).detach().to("cpu", torch.float64)
                  for chunk in features.detach().split(SCORE_CHUNK)]
        return torch.cat(scores).mul_(-self._scale)


def fit_posthoc(name: str, train_features: torch.Tensor, train_labels: torch.Tensor,
                weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> FittedDetector:
    """Fit pytorch-ood's ``name`` detector on a timm model's pre-logit training features.

    Args:
        name: one of :data:`POSTHOC_DETECTORS` (``vim``, ``mahalanobis``, ``react``, ``ash``).
        train_features: ``(N, D)`` float pre-logit features of the training images (no augmentation).
        train_labels: ``(N,)`` their class labels ``0 .. C-1`` (Mahalanobis needs every class present).
        weight: ``(C, D)`` weight of the model's linear classifier; needed by vim, react and ash.
        bias: ``(C,)`` its bias; zeros when the classifier has none.

    Raises:
        ValueError: (one line) an unknown name, a missing classifier weight, or shapes that do not fit.
        ImportError: pytorch-ood is not installed (``pip install 'timm-isomax[posthoc]'``).

    Example:
        >>> detector = fit_posthoc("mahalanobis", train_features, train_labels)
        >>> detector.score(test_features).shape
        torch.Size([10000])
    """
    if name not in POSTHOC_DETECTORS:
        raise ValueError(f"unknown post-hoc detector {name!r}; choose one of {', '.join(POSTHOC_DETECTORS)}.")
    try:
        import pytorch_ood.detector as pood
    except ImportError as error:
        raise ImportError(f"the post-hoc detectors come from pytorch-ood, which is not installed: "
                          f"{_INSTALL_HINT}") from error

    features, labels = _check_training_set(train_features, train_labels)
    width = features.shape[1]
    if name in _NEEDS_CLASSIFIER:
        weight, bias = _check_classifier(name, weight, bias, width, features.device)
    if name == "vim":
        return _fit_vim(pood, features, labels, weight, bias)
    if name == "mahalanobis":
        return _fit_mahalanobis(pood, features, labels)
    if name == "react":
        return _fit_react(pood, features, labels, weight, bias)
    return _fit_ash(pood, width, weight, bias)


def _fit_vim(pood, features, labels, weight, bias) -> FittedDetector:
    d = vim_dimension(features.shape[1])
    vim = pood.ViM(None, d=d, w=weight, b=bias).fit_features(features, labels)
    return FittedDetector("vim", vim, vim.predict_features, features.shape[1], torch.float32,
                          params={"d": vim.d, "alpha": float(vim.alpha)})


def _fit_mahalanobis(pood, features, labels) -> FittedDetector:
    n, width = features.shape
    classes = int(labels.max()) + 1
    missing = sorted(set(range(classes)) - set(labels.unique().tolist()))
    if missing:
        raise ValueError(f"mahalanobis needs training features of every class 0..{classes - 1}; "
                         f"missing: {missing[:10]}{' ...' if len(missing) > 10 else ''}.")
    if n - classes < width:
        raise ValueError(f"mahalanobis needs more training features than feature width plus classes to "
                         f"estimate a full-rank covariance: got {n} features of width {width}, {classes} classes.")
    with _default_dtype(torch.float64):  # pytorch-ood allocates its means and covariance in the default dtype
        mahalanobis = pood.Mahalanobis(None).fit_features(features.to(torch.float64), labels)
    # pytorch-ood 0.4.0 scores 0.5 * min_c d^T (S + 1e-6 I)^-1 d with S the unnormalised scatter matrix
    # (N Sigma): 2N times that is the paper's squared Mahalanobis distance under Sigma.
    return FittedDetector("mahalanobis", mahalanobis, mahalanobis.predict_features, width, torch.float64,
                          scale=2.0 * n, params={"classes": classes, "fit_size": n})


def _fit_react(pood, features, labels, weight, bias) -> FittedDetector:
    head = _linear(weight, bias)
    # the percentile is taken over the features as given (float32 from a model: no float64 copy of N x D)
    react = pood.ReAct(backbone=None, head=head, percentile=REACT_PERCENTILE)
    react.fit_feature_maps(features, labels)
    return FittedDetector("react", react, react.predict_feature_maps, features.shape[1], torch.float64,
                          params={"percentile": REACT_PERCENTILE, "threshold": float(react.threshold)})


def _fit_ash(pood, width, weight, bias) -> FittedDetector:
    head = torch.nn.Sequential(torch.nn.Flatten(), _linear(weight, bias))
    ash = pood.ASH(backbone=None, head=head, variant=ASH_VARIANT, percentile=ASH_PERCENTILE)

    def predict(chunk: torch.Tensor) -> torch.Tensor:  # pytorch-ood's ASH takes (B, C, H, W) feature maps
        return ash.predict_feature_maps(chunk[:, :, None, None])

    return FittedDetector("ash", ash, predict, width, torch.float64,
                          params={"variant": ASH_VARIANT, "percentile": ASH_PERCENTILE})


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Linear:
    """The classifier as a float64 ``nn.Linear`` (the head pytorch-ood's ReAct / ASH propagate through)."""
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64, device=weight.device)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear.requires_grad_(False).eval()


def _check_training_set(features: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"train_features must be a float tensor of shape (N, D), got "
                         f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}.")
    labels = torch.as_tensor(labels)
    if labels.shape != (features.shape[0],) or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"train_labels must be integer labels of shape ({features.shape[0]},), "
                         f"got {labels.dtype} {tuple(labels.shape)}.")
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 training features, got {features.shape[0]}.")
    if int(labels.min()) < 0:
        raise ValueError("train_labels must be class indices 0..C-1 (the fit set is in-distribution), "
                         f"got {int(labels.min())}.")
    if not torch.isfinite(features).all():
        raise ValueError("train_features contain NaN or infinite values.")
    return features.detach(), labels.to(features.device)


def _check_classifier(name: str, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], width: int,
                      device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    if weight is None:
        raise ValueError(f"{name} needs the linear classifier's weight (C, D): pass weight= (and bias=), "
                         f"e.g. model.get_classifier().weight.")
    weight = weight.detach()
    if weight.dim() != 2 or weight.shape[1] != width:
        raise ValueError(f"weight must have shape (C, {width}) to match the features, got {tuple(weight.shape)}.")
    bias = torch.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias.detach()
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},) to match the weight, got {tuple(bias.shape)}.")
    return weight.to(device), bias.to(device)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
