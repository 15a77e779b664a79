"""Image datasets for training and evaluation, through Hugging Face ``datasets``.

One module per concern: where datasets come from (:mod:`.sources`), JSON views of them (:mod:`.views`), their
columns and labels (:mod:`.columns`), decoding and the torch dataset (:mod:`.images`), preprocessing from the
model's data config (:mod:`.transforms`), splits decoded once into uint8 tensors (:mod:`.decoded`), batched
augmentation of such tensors on their device (:mod:`.augment`), and which rows: samples and validation splits (:mod:`.splits`).

``timm_isomax.data`` was one module before it became this package; its names stay here.
"""
from .._lazy import lazy_exports

# public name -> the module of this package that defines it, imported when the name is first read
_EXPORTS = {
    "SKLEARN_DIGITS": "sources", "load_image_dataset": "sources", "load_view": "sources", "dataset_name": "sources",
    "is_view": "views", "VIEW_KEYS": "views",
    "find_columns": "columns", "select_classes": "columns", "check_labels": "columns", "column_values": "columns",
    "class_count": "columns",
    "convert_image": "images", "undecodable_rows": "images", "image_digests": "images",
    "content_fingerprint": "images",
    "drop_undecodable_images": "images", "ImageDataset": "images", "materialize": "images",
    "model_in_chans": "transforms", "model_data_config": "transforms", "model_transform": "transforms",
    "dataset_for_model": "transforms", "pad_crop_flip_transform": "transforms", "AUGMENTATIONS": "transforms",
    "LabelledSplits": "splits", "load_labelled_splits": "splits", "sample_rows": "splits", "load_sample": "splits",
    "SUBSETS": "splits", "DEFAULT_VAL_FRACTION": "splits", "TEST_SPLIT": "splits", "subset_problem": "splits",
    "val_fraction_problem": "splits",
    "DecodedImages": "decoded", "DecodedCache": "decoded", "decode_rows": "decoded", "decoded_for_model": "decoded",
    "PAD_MODES": "augment", "FLIPS": "augment", "TTA_LEVELS": "augment", "crop_flip": "augment",
    "draw_crop_flip": "augment", "tta_views": "augment",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
