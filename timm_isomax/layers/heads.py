"""Distance-based classification heads: IsoMax (TNNLS 2021), IsoMax+ (2021) and DisMax (2022).

The heads turn a batch of pre-logit features ``f`` (B, D) into logits (B, C) that are negative
distances to one learned prototype per class:

* :class:`IsoMaxPlusHead`: ``logits = -|s| * ||f^ - p^_c|| / T`` with L2-normalised features and
  prototypes and a learned distance scale ``s``;
* :class:`IsoMaxHead`: ``logits = -||f - p_c|| / T``;
* :class:`DisMaxHead`: ``logits = -(d_c + mean_k d_k) / T`` with ``d_c = |s| * ||f^ - p^_c|| / sqrt(2)``: each
  logit also sees the distances to every other prototype.

``T`` is a temperature buffer (1 during training; set by calibration). It is saved with the weights.

Distances use the matmul form ``sqrt(|f|^2 + |p|^2 - 2 f.p)``: one (B, D) x (D, C) product, like a
linear layer, and no (B, C, D) tensor. ``distance_mode="cdist"`` selects the exact reference form
(``torch.cdist`` without the mm shortcut), which costs O(B*C*D) and exists for testing and auditing.
The head always computes in float32, also under autocast: under bf16 the matmul form's distance error
is about 1e-2 (measured), which is the size of the gaps the OOD score relies on.
"""
import math
from contextlib import nullcontext
from typing import Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IsoMaxPlusHead", "IsoMaxHead", "DisMaxHead", "euclidean_distances", "DISTANCE_MODES"]

DistanceMode = Literal["matmul", "cdist"]
DISTANCE_MODES = ("matmul", "cdist")

# Floor on squared distances before the square root. The matmul form cancels to <= 0 for
# (near-)identical vectors, and d sqrt(x)/dx is infinite at 0; the floor keeps values and gradients
# finite (the floor's distance, 1e-6, is far below fp32's resolution of 2 - 2cos, about 3e-4).
_MIN_SQUARED_DISTANCE = 1e-12

# Devices on which torch.autocast can be entered to switch it off around the head.
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def euclidean_distances(
    x: torch.Tensor, y: torch.Tensor, mode: DistanceMode = "matmul", unit_norm: bool = False
) -> torch.Tensor:
    """Pairwise Euclidean distances between the rows of ``x`` (B, D) and ``y`` (C, D), shape (B, C).

    Args:
        x: first set of row vectors.
        y: second set of row vectors.
        mode: ``"matmul"`` (one matrix product, memory O(B*C)) or ``"cdist"`` (exact reference form).
        unit_norm: the caller guarantees that every row of ``x`` and ``y`` has norm 1, so the squared
            norms are 1 and need not be computed.

    Example:
        >>> d = euclidean_distances(torch.randn(4, 8), torch.randn(3, 8))
        >>> d.shape
        torch.Size([4, 3])
    """
    if mode not in DISTANCE_MODES:
        raise ValueError(f"distance mode must be one of {DISTANCE_MODES}, got {mode!r}")
    if mode == "matmul" and unit_norm:
        return _unit_distances(x, y)[1]
    # Computed on x / s and y / s, then multiplied back by s, a power of two >= every magnitude: the
    # squares inside cannot overflow (norms above ~1e19 in float32 gave inf, and inf - inf = NaN), and
    # the values are bit-identical to the unscaled form elsewhere, except that the matmul form's floor
    # becomes 1e-6 * s, still far below its cancellation error (~3e-4 * |x|). s is constant for autograd.
    magnitude = y.detach().abs().amax() if y.numel() else torch.zeros((), device=y.device, dtype=y.dtype)
    if x.numel():  # an empty batch has no maximum
        magnitude = torch.maximum(magnitude, x.detach().abs().amax())
    scale = _power_of_two_at_least(magnitude)
    x, y = x / scale, y / scale
    if mode == "cdist":
        return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist") * scale
    return _matmul_distances(x, y) * scale


def _matmul_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    squared_norms = x.pow(2).sum(dim=1, keepdim=True) + y.pow(2).sum(dim=1).unsqueeze(0)
    squared = torch.addmm(squared_norms, x, y.t(), beta=1.0, alpha=-2.0)
    return squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()


_NORM_EPS = 1e-12  # F.normalize's default


def _unit_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x / |x|, |x|)`` row-wise, the norm floored like F.normalize."""
    norms = x.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)
    return x / norms, norms


# Feature rows with a norm in [2^-32, inf) are normalised as they are: their squared norm neither overflowed
# (inf; NaN and inf rows fail the test too) nor underflowed (0, or a sum that lost bits). There, dividing
# by a power of two first (_rescaled_unit_rows) gives the same bits, as it is exact except where it makes
# subnormals: squares of elements below ~2^-63, whose rounding (at most D * 2^-150 in all) lies ~2^20 below
# half an ulp of |x|^2 >= 2^-64 for D up to 2^40, and unit components below 2^-126, rounded twice there.
_PLAIN_NORM_MIN = 2.0 ** -32


def _unit_feature_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`_unit_rows` that also holds for rows whose squared norm over- or underflows float32 (norms
    above ~1e19 or below ~1e-19, where ``x.norm()`` gives inf or 0 and the direction would be lost).

    Used for features, the head's untrusted input; prototypes are trained parameters. Eager on the CPU the
    norms come first, and the batch goes through :func:`_rescaled_unit_rows` (two extra passes over (B, D),
    a measurable part of the forward: docs/performance.md) only if one of them is out of range: branching on
    the data is free there, with no device to wait for. Elsewhere (see :func:`_can_branch_on_values`) every batch is
    rescaled. Both ways give the same bits (see ``_PLAIN_NORM_MIN`` for the subnormal fine print).
    """
    if _can_branch_on_values(x):
        norms = x.norm(dim=1, keepdim=True)
        if bool(((norms >= _PLAIN_NORM_MIN) & (norms < math.inf)).all()):
            return x / norms, norms  # norms >= 2^-32: _unit_rows' floor (1e-12) would not act
    return _rescaled_unit_rows(x)


def _rescaled_unit_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`_unit_rows` of each row divided first by a power of two >= its largest magnitude, then scaled back:
    no square can overflow, and the largest is > 1/4, so the direction survives underflow of the others.

    The scale is a constant for autograd (the direction does not depend on it). Two extra passes over (B, D).
    """
    row_scale = _power_of_two_at_least(x.detach().abs().amax(dim=1, keepdim=True))
    unit, norms = _unit_rows(x / row_scale)
    return unit, norms * row_scale


def _can_branch_on_values(x: torch.Tensor) -> bool:
    """Whether a Python ``if`` on the values of ``x`` is free and allowed: a plain CPU tensor in eager mode.

    Not on accelerators (a host sync), under torch.compile or torch.jit.trace (ONNX export), nor for tensors
    without values to branch on: torch.export's fake tensors (a subclass) and functorch's (vmap) wrappers.
    """
    # the compile check first: dynamo cannot trace the functorch one
    return (not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and x.device.type == "cpu"
            and type(x) is torch.Tensor and not torch._C._functorch.is_functorch_wrapped_tensor(x))


def _power_of_two_at_least(magnitude: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= ``magnitude``, elementwise; 1 where it is 0 or NaN, inf where it is inf.

    Dividing by a power of two is exact in floating point, so a rescaled computation gives bit-identical
    results wherever the unscaled one neither overflows nor underflows. No host sync: all on-device.
    """
    # pow(2, .) rather than exp2: ONNX has Pow but no Exp2 (the exporter would fail to inline the head)
    return torch.where(magnitude > 0, torch.pow(2.0, torch.ceil(torch.log2(magnitude))), torch.ones_like(magnitude))


def _unit_distances(unit_x: torch.Tensor, unit_y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(2 - 2 x.y, sqrt(max(2 - 2 x.y, floor)))`` for unit rows: squared and plain distances."""
    squared = torch.addmm(unit_x.new_full((1, 1), 2.0), unit_x, unit_y.t(), alpha=-2.0)
    return squared, squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()


def _normalize_backward(grad_unit: torch.Tensor, unit: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Gradient through ``x / |x|``: ``(g - u (g.u)) / |x|``, computed in place in ``grad_unit``."""
    row_dot = torch.linalg.vecdot(grad_unit, unit, dim=1).unsqueeze(1)
    return grad_unit.addcmul_(unit, row_dot, value=-1.0).div_(norms)


class _IsoMaxPlusLogits(torch.autograd.Function):
    """``-|s| * sqrt(max(2 - 2 f^.p^, floor)) / T`` with a hand-written backward.

    The same values and gradients as composing F.normalize, addmm and sqrt under autograd, which
    spends more time in elementwise passes over the (C, D) prototypes and the (B, C) distances than in its
    two matrix products (measured: 2.05x nn.Linear's forward+backward at B=256, D=1024, C=21,843). Here the
    backward makes the two products plus one pass per tensor.
    """

    @staticmethod
    def forward(ctx, features, prototypes, distance_scale, temperature):
        unit_features, feature_norms = _unit_feature_rows(features)
        unit_prototypes, prototype_norms = _unit_rows(prototypes)
        squared, distances = _unit_distances(unit_features, unit_prototypes)
        ctx.save_for_backward(unit_features, unit_prototypes, feature_norms, prototype_norms, squared, distances,
                              distance_scale, temperature)
        return distances * -(distance_scale.abs() / temperature)

    @staticmethod
    def backward(ctx, grad_logits):
        unit_f, unit_p, f_norms, p_norms, squared, distances, distance_scale, temperature = ctx.saved_tensors
        scale = distance_scale.abs() / temperature
        grad_scale = None
        if ctx.needs_input_grad[2]:
            grad_scale = (-(grad_logits * distances).sum() / temperature * torch.sign(distance_scale)).reshape(1)
        # d logits / d cos = scale / d where the floor is not active (clamp passes no gradient below it)
        grad_cos = (grad_logits * scale).div_(distances).masked_fill_(squared < _MIN_SQUARED_DISTANCE, 0.0)
        grad_f = grad_p = None
        if ctx.needs_input_grad[0]:
            grad_f = _normalize_backward(grad_cos @ unit_p, unit_f, f_norms)
        if ctx.needs_input_grad[1]:
            grad_p = _normalize_backward(grad_cos.t() @ unit_f, unit_p, p_norms)
        return grad_f, grad_p, grad_scale, None


def _autocast_off(device: torch.device):
    """A context that disables autocast for ``device`` (no-op on devices without autocast, e.g. meta)."""
    if device.type in _AUTOCAST_DEVICES:
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


class _PrototypeHead(nn.Module):
    """Shared machinery: prototypes, temperature buffer, input checks, fp32 distance computation."""

    normalize: bool = False

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        distance_mode: DistanceMode = "matmul",
        temperature: float = 1.0,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"{type(self).__name__} needs num_classes >= 1 (one prototype per class), got "
                f"{num_classes!r}; for features without a head use forward_head(x, pre_logits=True)."
            )
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"{type(self).__name__} needs in_features >= 1, got {in_features!r}.")
        if distance_mode not in DISTANCE_MODES:
            raise ValueError(f"distance_mode must be one of {DISTANCE_MODES}, got {distance_mode!r}.")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.in_features = in_features
        self.num_classes = num_classes
        self.distance_mode = distance_mode
        self.prototypes = nn.Parameter(torch.empty(num_classes, in_features))
        # A buffer, so calibration survives save/load and travels with the weights to the Hub.
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def _check_features(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects pre-logit features of shape (batch, {self.in_features}), "
                f"got {tuple(features.shape)}; pass the output of forward_head(x, pre_logits=True)."
            )

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Distances (B, C) from each feature vector to each class prototype, in float32."""
        self._check_features(features)
        with _autocast_off(features.device):
            f = features.float()
            p = self.prototypes.float()
            if self.normalize:
                f = _unit_feature_rows(f)[0]
                p = F.normalize(p, dim=1)
            return euclidean_distances(f, p, mode=self.distance_mode, unit_norm=self.normalize)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, distance_mode={self.distance_mode}"


class IsoMaxPlusHead(_PrototypeHead):
    """IsoMax+ head: ``logits = -|s| * ||f^ - p^_c|| / T`` (Macedo & Ludermir, 2021).

    Args:
        in_features: width D of the pre-logit features.
        num_classes: number of classes C (one prototype each).
        distance_mode: ``"matmul"`` (fast, default) or ``"cdist"`` (exact reference form).
        temperature: initial value of the temperature buffer ``T``.

    Example:
        >>> head = IsoMaxPlusHead(512, 10)
        >>> head(torch.randn(8, 512)).shape
        torch.Size([8, 10])
    """

    normalize = True
    # What the unit distances are divided by, besides T: 1 here; DisMax measures them in units of sqrt(2).
    distance_divisor: float = 1.0

    def __init__(self, in_features: int, num_classes: int, distance_mode: DistanceMode = "matmul",
                 temperature: float = 1.0):
        super().__init__(in_features, num_classes, distance_mode, temperature)
        self.distance_scale = nn.Parameter(torch.ones(1))
        # unit prototypes for inference, keyed by the prototypes' version counter, storage and dtype: any
        # in-place update (optimizer step, load_state_dict) or move invalidates it. Not saved.
        self._unit_prototypes_cache: Optional[Tuple[tuple, torch.Tensor]] = None

    def _unit_prototypes(self) -> torch.Tensor:
        prototypes = self.prototypes
        key = (prototypes._version, prototypes.data_ptr(), prototypes.dtype, prototypes.device)
        if self._unit_prototypes_cache is None or self._unit_prototypes_cache[0] != key:
            self._unit_prototypes_cache = (key, _unit_rows(prototypes.detach().float())[0])
        return self._unit_prototypes_cache[1]

    def reset_parameters(self) -> None:
        # As in the reference implementation: N(0, 1) prototypes, distance scale 1.
        nn.init.normal_(self.prototypes, mean=0.0, std=1.0)
        if hasattr(self, "distance_scale"):
            nn.init.constant_(self.distance_scale, 1.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.distance_mode == "matmul":
            self._check_features(features)
            with _autocast_off(features.device):
                scale, temperature = self.distance_scale.float(), self.temperature.float() * self.distance_divisor
                needs_grad = torch.is_grad_enabled() and (features.requires_grad or self.prototypes.requires_grad)
                if needs_grad or torch.compiler.is_compiling() or torch.jit.is_tracing():
                    return _IsoMaxPlusLogits.apply(features.float(), self.prototypes.float(), scale, temperature)
                # inference: the prototypes' normalisation (C x D) is cached instead of redone per batch
                _, distances = _unit_distances(_unit_feature_rows(features.float())[0], self._unit_prototypes())
                return distances * -(scale.abs() / temperature)
        distances = self.distances(features)
        return -self.distance_scale.float().abs() * distances / (self.temperature * self.distance_divisor)


class IsoMaxHead(_PrototypeHead):
    """IsoMax head: ``logits = -||f - p_c|| / T`` (Macedo, Ren, Zanchettin, Oliveira & Ludermir, 2021).

    Takes the arguments of :class:`IsoMaxPlusHead`; there is no distance scale and nothing is normalised.

    Example:
        >>> IsoMaxHead(64, 3)(torch.randn(2, 64)).shape
        torch.Size([2, 3])
    """

    def reset_parameters(self) -> None:
        # As in the reference implementation: prototypes start at the origin.
        nn.init.zeros_(self.prototypes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return -self.distances(features) / self.temperature


class DisMaxHead(IsoMaxPlusHead):
    """DisMax head: ``logits_c = -(d_c + mean_k d_k) / T`` with ``d_c = |s| * ||f^ - p^_c|| / sqrt(2)``
    (Macedo, Zanchettin & Ludermir, 2022, "Distinction Maximization Loss", arXiv:2205.05874).

    The IsoMax+ distances in units of sqrt(2) (so ``d_c / |s|`` lies in [0, sqrt(2)]), plus the mean distance to
    all prototypes, the same for every class of a row: it changes no prediction, but lowers every logit of an input
    far from all prototypes, which the MMLES score (:func:`timm_isomax.layers.scores.mmles`) reads. Takes the arguments
    of :class:`IsoMaxPlusHead` and shares its parameters (N(0, 1) prototypes, ``s = 1``), fused matmul path and
    fp32 computation; the temperature buffer ``T`` stays 1 in training and is set by calibration.

    Example:
        >>> head = DisMaxHead(512, 10)
        >>> head(torch.randn(8, 512)).shape
        torch.Size([8, 10])
    """

    distance_divisor = math.sqrt(2.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # -(d_c + mean d) / T = l_c + mean_k l_k for l = -d / T: one (B, C) pass over the IsoMax+ form's logits
        logits = super().forward(features)
        with _autocast_off(logits.device):
            return logits + logits.mean(dim=1, keepdim=True)
