"""Image datasets for training and evaluation: Hugging Face ``datasets`` sources, columns, decoding, transforms
from the model's data config, and seeded splits (:mod:`.datasets`); JSON views of other datasets (:mod:`.views`)."""
from .datasets import *  # noqa: F401,F403
from .datasets import __all__ as _datasets_all
from .views import VIEW_KEYS, dataset_name, is_view, load_view

__all__ = [*_datasets_all, "VIEW_KEYS", "dataset_name", "is_view", "load_view"]
