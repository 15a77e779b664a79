"""Preprocessing from the model's timm data config: the eval and training transforms (timm's random-resized crop, the
CIFAR pad-crop-flip), with the channel count made to match the model.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import torch

from .images import ImageDataset
from .sources import load_image_dataset

__all__ = ["model_in_chans", "model_data_config", "model_transform", "dataset_for_model", "AUGMENTATIONS",
           "augmented_dataset", "pad_crop_flip_transform"]


def model_in_chans(model: torch.nn.Module) -> int:
    """The number of input channels ``model`` takes (its ``in_chans``, else its first convolution)."""
    import timm

    chans = getattr(model, "in_chans", None)
    if isinstance(chans, int):
        return chans
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if isinstance(first_conv, str):
        weight = getattr(model.get_submodule(first_conv), "weight", None)
        if weight is not None and weight.ndim >= 2:
            return int(weight.shape[1])
    return int(timm.data.resolve_data_config({}, model=model)["input_size"][0])


def _match_channels(values: Sequence[float], chans: int) -> Tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == chans:
        return values
    # a grey config for an RGB model repeats; an RGB config for a grey model averages the channels
    return values * chans if len(values) == 1 else (float(np.mean(values)),) * chans


def model_data_config(model: torch.nn.Module, overrides: Optional[Dict] = None) -> Dict:
    """The model's timm data config (``timm.data.resolve_data_config``) with ``overrides``, its channel count
    made to match the model's input channels (a model created with ``in_chans=1`` may keep an RGB
    pretrained config)."""
    import timm

    config = dict(timm.data.resolve_data_config(dict(overrides or {}), model=model))
    chans = model_in_chans(model)
    if config["input_size"][0] != chans:
        config["input_size"] = (chans, *config["input_size"][1:])
    config["mean"] = _match_channels(config["mean"], chans)
    config["std"] = _match_channels(config["std"], chans)
    return config


def model_transform(model: torch.nn.Module, is_training: bool = False, data_config: Optional[Dict] = None,
                    **transform_kwargs) -> Tuple[Callable, str]:
    """``(transform, PIL mode)`` for ``model``: timm's transform of :func:`model_data_config`, and ``"L"``
    for 1-channel models, ``"RGB"`` for 3-channel ones (images are converted to it)."""
    import timm

    config = model_data_config(model, data_config)
    chans = config["input_size"][0]
    if chans not in (1, 3):
        raise ValueError(f"the model takes {chans} input channels; only 1 (grey) and 3 (RGB) image models are supported.")
    transform = timm.data.create_transform(**config, is_training=is_training, **transform_kwargs)
    return transform, "L" if chans == 1 else "RGB"


def dataset_for_model(model: torch.nn.Module, source: Union[str, datasets.Dataset], split: Optional[str] = None,
                      is_training: bool = False, limit: Optional[int] = None, image_column: Optional[str] = None,
                      label_column: Optional[str] = None, data_config: Optional[Dict] = None,
                      skip_undecodable: bool = False, **transform_kwargs) -> ImageDataset:
    """An :class:`ImageDataset` preprocessed the way ``model`` expects (its timm data config).

    Args:
        model: a timm model; its resolved data config gives size, interpolation, crop and normalisation.
        source: a loaded ``datasets.Dataset`` or anything :func:`load_image_dataset` takes.
        split: the split, when ``source`` is not already one.
        is_training: timm's training transform (augmentation) instead of the eval transform.
        limit: keep the first ``limit`` rows.
        data_config: data-config keys to override (e.g. ``{"input_size": (3, 32, 32)}``).
        skip_undecodable: decode every image once and drop the rows that fail, with a warning giving
            their count (see :class:`ImageDataset`); otherwise a bad row raises when it is read.
        transform_kwargs: further ``timm.data.create_transform`` arguments (e.g. ``scale``, ``hflip``).

    Example:
        >>> test = dataset_for_model(model, "../shared/data/imagenet_sample", split="test")
    """
    dataset = source if isinstance(source, datasets.Dataset) else load_image_dataset(source, split=split)
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    transform, mode = model_transform(model, is_training, data_config, **transform_kwargs)
    return ImageDataset(dataset, transform, mode=mode, image_column=image_column, label_column=label_column,
                        skip_undecodable=skip_undecodable)


# Training augmentations by name: what ``train_transform["augmentation"]`` may say.
AUGMENTATIONS = ("rrc", "crop-flip", "none")


def augmented_dataset(model, split, train_transform, data_config, columns) -> "ImageDataset":
    options = dict(train_transform or {"augmentation": "none"})
    augmentation = options.pop("augmentation", "rrc")
    if augmentation == "none":
        return dataset_for_model(model, split, data_config=data_config, **columns)
    if augmentation == "rrc":  # timm's training transform: random-resized crop, flip, colour jitter off by default
        return dataset_for_model(model, split, is_training=True, data_config=data_config, **columns, **options)
    if augmentation == "crop-flip":  # the CIFAR recipe: pad, random crop back to size, horizontal flip
        transform, mode = pad_crop_flip_transform(model, data_config, padding=options.get("padding", 4))
        return ImageDataset(split, transform, mode=mode, **columns)
    raise ValueError(f"unknown augmentation {augmentation!r}; choose one of {', '.join(AUGMENTATIONS)}.")


def pad_crop_flip_transform(model: torch.nn.Module, data_config: Optional[Dict] = None,
                            padding: int = 4) -> Tuple[Callable, str]:
    """The CIFAR training augmentation for ``model``: resize to its input size, zero-pad by ``padding``,
    random crop back, random horizontal flip, then its normalisation. ``(transform, PIL mode)``."""
    from torchvision import transforms

    config = model_data_config(model, data_config)
    chans, height, width = config["input_size"]
    if chans not in (1, 3):
        raise ValueError(f"the model takes {chans} input channels; only 1 (grey) and 3 (RGB) image models are supported.")
    transform = transforms.Compose([
        transforms.Resize((height, width), interpolation=transforms.InterpolationMode(config["interpolation"])),
        transforms.RandomCrop((height, width), padding=padding),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(config["mean"], config["std"]),
    ])
    return transform, "L" if chans == 1 else "RGB"
