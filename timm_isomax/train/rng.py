"""Random streams of a run, made exact across interruptions: per-epoch reseeding, per-image augmentation
seeds, generator states for mid-epoch checkpoints, and a sampler that skips what was already trained."""
import itertools
import random
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["seed_everything", "rng_states", "set_rng_states", "PerImageSeeds", "SkipFirst", "epoch_seed", "item_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed every random stream of ``epoch`` starts from."""
    return seed * 1000 + epoch


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item of an epoch (an image, a batch): the same whichever process draws it and whenever, so a
    run resumed in the middle of an epoch draws what the uninterrupted run drew."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % 2**63


def seed_everything(seed: int) -> None:
    # Reseeded at every epoch from (seed, epoch): a run resumed at an epoch boundary draws the same
    # random numbers (shuffling, augmentation, mixup, dropout) as an uninterrupted one.
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> Dict[str, Any]:
    """The main process's generator states, in types that ``torch.load(weights_only=True)`` reads back."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    states = dict(python=random.getstate(), numpy=(name, keys.tolist(), position, has_gauss, cached),
                  torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class PerImageSeeds(torch.utils.data.Dataset):
    """Each training image is augmented from its own seed (run seed, epoch, index), whichever worker loads
    it and in whatever order: a run resumed in the middle of an epoch skips the images already trained on
    and augments the rest exactly as the uninterrupted run did. The caller's generator states are restored
    after each image, so loading in the main process (workers=0) leaves its random streams alone."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image_seed = item_seed(self.seed, self.epoch, index)
        if torch.utils.data.get_worker_info() is not None:
            # a loader worker: nothing else draws from its generators, so no state to keep (saving and
            # restoring numpy's costs ~60 us per image, more than the seeding, on cores the model needs)
            self._seed(image_seed)
            return self.dataset[index]
        saved = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
        self._seed(image_seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.default_generator.set_state(saved[2])

    @staticmethod
    def _seed(image_seed: int) -> None:
        random.seed(image_seed)
        np.random.seed(image_seed % 2**32)
        torch.default_generator.manual_seed(image_seed)  # not torch.manual_seed: that would reseed CUDA too


class SkipFirst(torch.utils.data.Sampler):
    """``sampler`` without its first ``skip`` indices (never loaded): the rest of an interrupted epoch."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)
