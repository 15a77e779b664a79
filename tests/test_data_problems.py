"""Damaged real data (the first MNIST rows of ../shared/data): undecodable images, unusual image modes,
missing and out-of-range labels, empty splits; through ImageDataset, dataset_for_model, materialize and
the trainer's data loading (data.load_labelled_splits)."""
import collections
import io
import warnings

import datasets
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_isomax  # noqa: F401  (registers the IsoMax architectures)
from timm_isomax import data as tdata

ROWS = 20


@pytest.fixture(scope="module")
def mnist(shared_data):
    """The first 20 MNIST test rows, images as PNG bytes (as the Parquet files store them)."""
    return tdata.load_image_dataset(str(shared_data / "mnist"), split="test").select(range(ROWS))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format={"CMYK": "JPEG", "F": "TIFF"}.get(image.mode, "PNG"))
    return buffer.getvalue()


def _with_images(dataset, replace):
    """``dataset`` with image ``i`` replaced by ``replace[i]`` (bytes, or None for no image)."""
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    images = [{"bytes": replace[i], "path": None} if i in replace and replace[i] is not None else
              (None if i in replace else value) for i, value in enumerate(raw["image"])]
    return datasets.Dataset.from_dict({"image": images, "label": dataset["label"]},
                                      features=dataset.features)


def _transform(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32).copy())


def test_undecodable_images_raise_one_line_naming_the_row_or_are_skipped_with_a_count(mnist):
    good = mnist.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
    damaged = _with_images(mnist, {3: good[: len(good) // 2], 7: b"not an image", 11: None})
    plain = tdata.ImageDataset(damaged, _transform, mode="L")
    for row, reason in ((3, "cannot be decoded"), (7, "cannot be decoded"), (11, "has no image")):
        with pytest.raises(ValueError, match=rf"row {row}\b.*{reason}.*skip_undecodable=True") as error:
            plain[row]
        assert "\n" not in str(error.value)
    with pytest.warns(UserWarning, match=r"skipped 3 of 20 images .*first: row 3"):
        skipping = tdata.ImageDataset(damaged, _transform, mode="L", skip_undecodable=True)
    assert skipping.skipped_rows == [3, 7, 11] and len(skipping) == ROWS - 3
    kept = [i for i in range(ROWS) if i not in (3, 7, 11)]
    assert [skipping[j][1] for j in range(len(skipping))] == [mnist[i]["label"] for i in kept]
    with pytest.raises(ValueError, match="none of its 20 images can be decoded"):
        tdata.drop_undecodable_images(_with_images(mnist, {i: b"x" for i in range(ROWS)}), "image")


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "P", "I;16", "1", "LA", "F"])
def test_unusual_image_modes_convert_to_what_the_model_takes(mnist, mode):
    grey = mnist[0]["image"].convert("L")
    values = np.asarray(grey)
    if mode == "I;16":  # 16-bit: PIL's convert("L") clips at 255 and would turn the digit into a white square
        image = Image.fromarray(values.astype(np.uint16) * 257)
    elif mode == "F":
        image = Image.fromarray(values.astype(np.float32) / 255.0, mode="F")
    else:  # RGBA / LA: opaque everywhere, so the pixels must come through unchanged
        image = grey.convert(mode)
    dataset = _with_images(mnist.select(range(2)), {0: _png(image)})
    for target in ("L", "RGB"):
        tensor, _ = tdata.ImageDataset(dataset, _transform, mode=target)[0]
        got = tensor if target == "L" else tensor.mean(dim=-1)
        tolerance = 128 if mode == "1" else 8 if mode in ("CMYK", "P") else 1  # 1-bit and lossy JPEG/palette
        assert (got - torch.from_numpy(values.astype(np.float32))).abs().mean() < tolerance, (mode, target)


def test_transparency_is_composited_onto_white():
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent, a stray colour underneath
    image.putpixel((0, 0), (0, 0, 0, 255))
    rgb = np.asarray(tdata.convert_image(image, "RGB"))
    assert rgb[1, 1].tolist() == [255, 255, 255] and rgb[0, 0].tolist() == [0, 0, 0]
    assert np.asarray(Image.fromarray(np.full((2, 2), 65535, np.uint16)).convert("L")).max() == 255  # PIL clips
    assert np.asarray(tdata.convert_image(Image.fromarray(np.full((2, 2), 32896, np.uint16)), "L")).max() == 128


def test_dataset_for_model_and_materialize_on_damaged_and_empty_data(mnist):
    model = timm.create_model("resnet10t_isomaxplus", num_classes=10, in_chans=1)
    damaged = _with_images(mnist, {5: b"\x89PNG\r\n\x1a\n"})
    with pytest.warns(UserWarning, match="skipped 1 of 20"):
        ready = tdata.dataset_for_model(model, damaged, data_config={"input_size": (1, 16, 16)}, skip_undecodable=True)
    images, labels = tdata.materialize(ready).tensors
    assert images.shape == (ROWS - 1, 1, 16, 16) and labels.tolist() == [y for i, y in enumerate(mnist["label"]) if i != 5]
    with pytest.raises(ValueError, match="empty dataset"):
        tdata.materialize(tdata.dataset_for_model(model, mnist.select([]), data_config={"input_size": (1, 16, 16)}))
    no_labels = tdata.dataset_for_model(model, mnist.remove_columns("label"), limit=2, data_config={"input_size": (1, 16, 16)})
    assert tdata.materialize(no_labels).tensors[1].tolist() == [-1, -1]  # documented: unlabelled rows give -1


def _finetune_data(tmp_path, train, test, second_split="test", **overrides):
    """The splits of a folder of ``train.parquet`` and ``<second_split>.parquet`` (the layout of ../shared/data),
    validating on the second one unless ``overrides`` say otherwise (on 'test': a warning says so)."""
    folder = tmp_path / "data"
    for name, split in (("train", train), (second_split, test)):
        split.to_parquet(str(folder / f"{name}.parquet"))
    return tdata.load_labelled_splits(str(folder), **{"val_split": second_split, **overrides})


def test_finetune_data_loading_checks_everything_before_training(mnist, tmp_path):
    good = mnist.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
    with pytest.warns(UserWarning, match=r"split 'train' of .*skipped 2 of 20"):
        loaded = _finetune_data(tmp_path / "a", _with_images(mnist, {0: good[:40], 1: None}), mnist)
    assert len(loaded.train) == ROWS - 2 and len(loaded.val) == ROWS and loaded.num_classes == 10

    int_labels = mnist.cast_column("label", datasets.Value("int64"))
    shifted = int_labels.map(lambda row, i: {"label": -1 if i == 4 else row["label"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"split 'train' .*1 of 20 rows have a label outside \[0, 9\].*row 4") as error:
        _finetune_data(tmp_path / "b", shifted, int_labels)
    assert "\n" not in str(error.value)
    too_big = int_labels.map(lambda row, i: {"label": 12 if i == 2 else min(row["label"], 5)}, with_indices=True)
    with pytest.raises(ValueError, match=r"split 'test' .*label outside \[0, 12\]"):
        _finetune_data(tmp_path / "c", too_big, int_labels.map(lambda row: {"label": 20}))
    with pytest.raises(ValueError, match="has no label column"):
        _finetune_data(tmp_path / "d", mnist.remove_columns("label"), mnist.remove_columns("label"))
    with pytest.raises(ValueError, match=r"test.parquet has 0 rows"):  # was: datasets' "corresponds to no data"
        _finetune_data(tmp_path / "e", mnist, mnist.select([]))
    with pytest.raises(ValueError, match=r"column 'label' holds Value\(string\).*class_encode_column"):
        tdata.find_columns(mnist.cast_column("label", datasets.Value("string")), label_column="label")


def test_plain_integer_labels_with_gaps_warn_naming_the_missing_classes(mnist, tmp_path):
    # no ClassLabel: the class count is the largest label + 1, so {0..7, 15} makes 16 classes, 7 never seen
    int_labels = mnist.cast_column("label", datasets.Value("int64"))
    assert sorted(set(int_labels["label"])) == [0, 1, 2, 3, 4, 5, 6, 7, 9]  # the first 20 MNIST test rows: no 8
    gaps = int_labels.map(lambda row: {"label": 15 if row["label"] == 9 else row["label"]})
    with pytest.warns(UserWarning, match=r"up to 15, so the model gets 16 classes, but 7 of them never occur in "
                                         r"split 'train' \(8, 9, 10, 11, 12, 13, 14\) .*remap the labels to 0..8 "
                                         r"\(dataset.class_encode_column\('label'\)"):
        splits = _finetune_data(tmp_path / "gaps", gaps, gaps)
    assert splits.num_classes == 16
    contiguous = int_labels.map(lambda row: {"label": 8 if row["label"] == 9 else row["label"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no gap, or classes named by a ClassLabel: nothing to say
        assert _finetune_data(tmp_path / "contiguous", contiguous, contiguous, "validation").num_classes == 9
        assert _finetune_data(tmp_path / "named", mnist, mnist, "validation").num_classes == 10


def test_empty_parquet_and_unsorted_image_folders_name_the_real_cause(mnist, tmp_path):
    from timm_isomax.evaluation import load_eval_set

    empty = tmp_path / "empty.parquet"
    mnist.select([]).to_parquet(str(empty))
    for load in (lambda: load_eval_set(str(empty), "empty"),  # an ID or OOD set of `evaluate`
                 lambda: tdata.load_labelled_splits(str(empty), train_split="empty")):
        with pytest.raises(ValueError, match=r"empty.parquet has 0 rows") as error:
            load()
        assert "\n" not in str(error.value)
    flat = tmp_path / "flat"  # images straight in the folder: no class to learn from
    flat.mkdir()
    for index in range(4):
        mnist[index]["image"].save(flat / f"{index}.png")
    with pytest.raises(ValueError, match=r"is an image folder whose images are not in class sub-folders: training "
                                         r"needs one sub-folder per class") as error:
        tdata.load_labelled_splits(str(flat))
    assert "--label-column" not in str(error.value)


def test_validation_on_the_test_data_warns_and_is_recorded(mnist, tmp_path):
    with pytest.warns(UserWarning, match=r"validation is the 'test' split, so the deployment threshold and the "
                                         r"monitoring see the test data"):
        named = _finetune_data(tmp_path / "named", mnist, mnist)  # --val-split test
    assert named.identity()["val_is_test"] == "validation is the 'test' split"
    folder = tmp_path / "copied"  # a validation file that is a copy of the test file
    for name in ("train", "validation", "test"):
        mnist.to_parquet(str(folder / f"{name}.parquet"))
    with pytest.warns(UserWarning, match=r"validation split 'validation' holds 20 of the 20 images of the 'test' split"):
        copied = tdata.load_labelled_splits(str(folder))  # picks 'validation' by itself
    assert "holds 20 of the 20" in copied.identity()["val_is_test"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a validation split of its own, or a share of train: silent
        own = _finetune_data(tmp_path / "own", mnist, mnist.select(range(10)), "validation")
        held = _finetune_data(tmp_path / "held", mnist, mnist, val_split=None, val_fraction=0.5)
    assert "val_is_test" not in own.identity() and "val_is_test" not in held.identity()


def test_limits_take_a_seeded_class_balanced_sample_and_say_so(mnist, tmp_path):
    by_class = mnist.sort("label")  # like an image folder: rows sorted by class
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing to warn about: every class is there
        splits = _finetune_data(tmp_path / "balanced", by_class, by_class, "validation", train_limit=10, val_limit=5, seed=3)
    counts = collections.Counter(splits.train["label"])
    assert len(splits.train) == 10 and max(counts.values()) - min(counts.values()) <= 1 and len(counts) == len(set(mnist["label"]))
    assert len(set(splits.val["label"])) == 5  # 5 rows, 5 classes
    assert splits.selection.startswith("train: 10 of 20 rows, class-balanced (seed 3); validation: 5 of 20 rows")
    assert splits.fitted_on.endswith(":validation[5 class-balanced, seed 3]")
    again = _finetune_data(tmp_path / "again", by_class, by_class, train_limit=10, seed=3)
    other = _finetune_data(tmp_path / "other", by_class, by_class, train_limit=10, seed=4)
    assert list(again.train["image"]) == list(splits.train["image"]) != list(other.train["image"])


def test_a_first_rows_limit_that_keeps_some_classes_only_warns(mnist, tmp_path):
    by_class = mnist.sort("label")
    with pytest.warns(UserWarning, match=r"train_limit 4 keeps the first 4 rows .* only 2 of its 10 classes"):  # 20 rows: classes 0 and 1 come first
        splits = _finetune_data(tmp_path / "sorted", by_class, mnist, train_limit=4, subset="first")
    assert list(splits.train["label"]) == list(by_class["label"])[:4]


def test_without_a_validation_split_a_recorded_share_of_train_is_held_out_never_test(mnist, tmp_path):
    train = datasets.concatenate_datasets([mnist] * 5)  # 100 rows, the 20 MNIST rows five times
    train = train.add_column("row", list(range(len(train))))
    test = mnist.add_column("row", [-1] * len(mnist))
    splits = _finetune_data(tmp_path / "held", train, test, val_split=None, seed=1)
    assert splits.val_split == "train" and -1 not in splits.val["row"]  # the test split is never touched
    assert sorted(list(splits.train["row"]) + list(splits.val["row"])) == list(range(len(train)))  # disjoint, nothing lost
    held = collections.Counter(splits.val["label"])
    assert held == {label: round(0.1 * n) for label, n in collections.Counter(train["label"]).items() if round(0.1 * n)}
    assert splits.fitted_on.endswith(":train[held out 0.1, seed 1]") and "held out of 'train'" in splits.selection
    assert list(_finetune_data(tmp_path / "same", train, test, val_split=None, seed=1).val["row"]) == list(splits.val["row"])
    assert list(_finetune_data(tmp_path / "other", train, test, val_split=None, seed=2).val["row"]) != list(splits.val["row"])
    with pytest.raises(ValueError, match="val_fraction must be between 0 and 1"):
        _finetune_data(tmp_path / "bad", train, test, val_split=None, val_fraction=1.5)


def test_column_detection_names_the_real_cause(mnist, tmp_path):
    import pyarrow.parquet as pq

    strings = mnist.cast_column("label", datasets.Value("string"))
    with pytest.raises(ValueError, match=r"column 'label' holds Value\(string\).*class_encode_column"):
        _finetune_data(tmp_path / "strings", strings, strings)  # was: "has no label column"
    folder = tmp_path / "plain"  # Parquet written by plain pyarrow: image as a {bytes, path} struct, no metadata
    folder.mkdir()
    table = mnist.cast_column("image", datasets.Image(decode=False)).data.table.replace_schema_metadata(None)
    pq.write_table(table, str(folder / "test.parquet"))
    plain = tdata.load_image_dataset(str(folder), split="test")
    assert isinstance(plain.features["image"], datasets.Image) and plain[0]["image"].size == (28, 28)
    with pytest.raises(ValueError, match=r"no image column .*\(label: ClassLabel\); pass image_column \(--image-column\)"):
        tdata.find_columns(mnist.remove_columns("image"))
