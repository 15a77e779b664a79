"""The classifier end of timm_isomax's own CIFAR networks (``cifar_resnet*``, ``cifar_airnet*``): global pool,
optional dropout and a linear ``fc``, with timm's classifier API, written once for both."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import SelectAdaptivePool2d

__all__ = ["PooledLinearClassifier"]


class PooledLinearClassifier(nn.Module):
    """Base of a timm-style network whose ``forward_features`` gives an (N, C, H, W) map: it owns
    ``global_pool``, ``fc``, ``num_classes``, ``num_features``, ``head_hidden_size`` and ``drop_rate``, and
    implements get_classifier / reset_classifier / forward_head / forward / set_grad_checkpointing."""

    def _init_classifier(self, num_features: int, num_classes: int, global_pool: str, drop_rate: float) -> None:
        self.num_classes = num_classes
        self.num_features = num_features
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.reset_classifier(num_classes, global_pool)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
            self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
