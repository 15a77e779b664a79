"""Distance-based classification heads: IsoMax (TNNLS 2021) and IsoMax+ (2021).

Both heads turn a batch of pre-logit features ``f`` (B, D) into logits (B, C) that are negative
distances to one learned prototype per class:

* :class:`IsoMaxPlusHead`: ``logits = -|s| * ||f^ - p^_c|| / T`` with L2-normalised features and
  prototypes and a learned distance scale ``s``;
* :class:`IsoMaxHead`: ``logits = -||f - p_c|| / T``.

``T`` is a temperature buffer (1 during training; set by calibration). It is saved with the weights.

Distances use the matmul form ``sqrt(|f|^2 + |p|^2 - 2 f.p)``: one (B, D) x (D, C) product, like a
linear layer, and no (B, C, D) tensor. ``distance_mode="cdist"`` selects the exact reference form
(``torch.cdist`` without the mm shortcut), which costs O(B*C*D) and exists for testing and auditing.
The head always computes in float32, also under autocast: under bf16 the matmul form's distance error
is about 1e-2 (measured), which is the size of the gaps the OOD score relies on.
"""
from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IsoMaxPlusHead", "IsoMaxHead", "euclidean_distances", "DISTANCE_MODES"]

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
    if mode == "cdist":
        return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    if mode != "matmul":
        raise ValueError(f"distance mode must be one of {DISTANCE_MODES}, got {mode!r}")
    if unit_norm:
        squared = torch.addmm(x.new_full((1, 1), 2.0), x, y.t(), beta=1.0, alpha=-2.0)
    else:
        squared_norms = x.pow(2).sum(dim=1, keepdim=True) + y.pow(2).sum(dim=1).unsqueeze(0)
        squared = torch.addmm(squared_norms, x, y.t(), beta=1.0, alpha=-2.0)
    return squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()


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
                f = F.normalize(f, dim=1)
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

    def __init__(self, in_features: int, num_classes: int, distance_mode: DistanceMode = "matmul",
                 temperature: float = 1.0):
        super().__init__(in_features, num_classes, distance_mode, temperature)
        self.distance_scale = nn.Parameter(torch.ones(1))

    def reset_parameters(self) -> None:
        # As in the reference implementation: N(0, 1) prototypes, distance scale 1.
        nn.init.normal_(self.prototypes, mean=0.0, std=1.0)
        if hasattr(self, "distance_scale"):
            nn.init.constant_(self.distance_scale, 1.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        distances = self.distances(features)
        return -self.distance_scale.float().abs() * distances / self.temperature


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
