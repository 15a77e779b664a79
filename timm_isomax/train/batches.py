"""Training batches from images decoded once (``--data-on-device``): each epoch indexes a uint8 tensor on the run's
device and augments whole batches there, instead of decoding and augmenting image by image in loader workers.

The random streams are the trainer's: the order comes from the epoch's seed, each batch's shifts and flips from its
own seed (run seed, epoch, batch), so a run resumed in the middle of an epoch skips the batches already trained on
and augments the rest exactly as the uninterrupted run did.
"""
from typing import Iterator, Tuple

import torch

from ..data import DecodedImages, crop_flip, draw_crop_flip
from .rng import epoch_seed, item_seed

__all__ = ["DecodedTrainBatches"]


class DecodedTrainBatches:
    """The training batches of one epoch (set :attr:`epoch` and :attr:`skip` first), full batches only, normalised.

    ``padding``: the largest shift of a crop (0: no crops); ``flip``: ``random`` (per image and batch),
    ``alternating`` (airbench: a seeded flip per image, inverted every odd epoch) or ``none``; ``pad_mode``:
    zeros or reflect. With several processes each takes every ``world_size``-th image of the epoch's order.

    Example:
        >>> batches = DecodedTrainBatches(decoded.to(device), 1024, seed=0, padding=2, flip="alternating")
        >>> batches.epoch = 3
        >>> for images, labels in batches: ...
    """

    def __init__(self, decoded: DecodedImages, batch_size: int, seed: int, padding: int = 0, flip: str = "random",
                 pad_mode: str = "zeros", rank: int = 0, world_size: int = 1):
        self.decoded, self.batch_size, self.seed = decoded, batch_size, seed
        self.padding, self.flip, self.pad_mode = padding, flip, pad_mode
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0
        # alternating flips: one fixed draw per image for the whole run
        self.base_flips = torch.rand(len(decoded), generator=torch.Generator().manual_seed(seed)) < 0.5

    @property
    def steps_per_epoch(self) -> int:
        return len(self.decoded) // self.world_size // self.batch_size

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.skip, 0)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.decoded), generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)))
        order = order[self.rank::self.world_size]
        device = self.decoded.images.device
        for step in range(self.skip, self.steps_per_epoch):
            rows = order[step * self.batch_size:(step + 1) * self.batch_size]
            images = self.decoded.images[rows.to(device)]
            shifts, flips = draw_crop_flip(len(rows), self.padding,
                                           torch.Generator().manual_seed(item_seed(self.seed, self.epoch, step)))
            if self.flip == "alternating":
                flips = self.base_flips[rows] ^ bool(self.epoch % 2)
            elif self.flip == "none":
                flips = torch.zeros_like(flips)
            if self.padding or flips.any():
                images = crop_flip(images, shifts.to(device), flips.to(device), self.pad_mode)
            yield self.decoded.normalize(images), self.decoded.labels[rows.to(device)]
