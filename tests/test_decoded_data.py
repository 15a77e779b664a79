"""Images decoded once (--data-on-device): the cache holds exactly the decoded pixels, the batched crops and flips are
torchvision's, the whitened first layer decorrelates its patches, and a run on decoded tensors resumes exactly."""
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

import timm
from timm_isomax.data import (DecodedCache, convert_image, crop_flip, dataset_for_model, decoded_for_model,
                              draw_crop_flip, load_labelled_splits, tta_views)
from timm_isomax.models.whitening import first_conv, patch_whitening, whiten_first_conv, WHITENING_EPS
from timm_isomax.train import TRAINING_DIR, TrainConfig, train
from tests.conftest import weights


@pytest.fixture(scope="module")
def cifar(shared_data):
    return load_labelled_splits(str(shared_data / "cifar10"), train_limit=512, val_limit=64)


def test_the_cache_round_trips_bit_exactly_to_the_decoded_images_of_the_same_rows(cifar, tmp_path):
    model = timm.create_model("cifar_airnet_small", num_classes=10)
    first = DecodedCache(str(tmp_path))
    images, labels = first.get(cifar.val, "image", "label", "RGB", (32, 32))
    again = DecodedCache(str(tmp_path))
    loaded, loaded_labels = again.get(cifar.val, "image", "label", "RGB", (32, 32))
    assert (first.decoded, first.loaded, again.decoded, again.loaded) == (1, 0, 0, 1)  # the second run read the file
    assert images.dtype == torch.uint8 and images.shape == (64, 3, 32, 32)
    assert torch.equal(loaded, images) and torch.equal(loaded_labels, labels)
    for row in (0, 17, 63):  # the pixels PIL decodes for the same rows, and their labels
        expected = np.asarray(convert_image(cifar.val[row]["image"], "RGB")).transpose(2, 0, 1)
        assert np.array_equal(loaded[row].numpy(), expected) and loaded_labels[row] == cifar.val[row]["label"]
    # normalised, they are what the per-image path feeds the model, bit for bit
    decoded = decoded_for_model(model, cifar.val, again)
    reference = dataset_for_model(model, cifar.val)
    assert torch.equal(decoded.normalize(decoded.images[:8]), torch.stack([reference[i][0] for i in range(8)]))
    # another size is another entry, never the 32x32 pixels
    assert DecodedCache.key(cifar.val, "image", "RGB", (24, 24), "bilinear") != DecodedCache.key(
        cifar.val, "image", "RGB", (32, 32), "bilinear")
    assert DecodedCache(str(tmp_path)).get(cifar.val, "image", "label", "RGB", (24, 24))[0].shape == (64, 3, 24, 24)


def test_a_fresh_copy_of_the_same_data_reads_the_cache_and_other_rows_do_not(shared_data, tmp_path):
    # datasets' own fingerprint follows the file's modification time: every session's fresh copy of the data missed
    # the cache and decoded again (issue 30's grid wrote a new 154 MB entry per run start)
    import os
    import shutil

    from timm_isomax.data import content_fingerprint, load_image_dataset

    full = []
    for name, mtime in (("first", 1_000_000_000), ("second", 1_500_000_000)):
        (tmp_path / name).mkdir()
        shutil.copy(shared_data / "mnist" / "test.parquet", tmp_path / name / "test.parquet")
        os.utime(tmp_path / name / "test.parquet", (mtime, mtime))
        full.append(load_image_dataset(str(tmp_path / name), split="test"))
    copies = [rows.select(range(96)) for rows in full]
    assert copies[0]._fingerprint != copies[1]._fingerprint  # what the cache was keyed by before
    cache_folder = str(tmp_path / "cache")
    first, second = DecodedCache(cache_folder), DecodedCache(cache_folder)
    images, labels = first.get(copies[0], "image", "label", "L", (28, 28))
    again, again_labels = second.get(copies[1], "image", "label", "L", (28, 28))
    assert (first.decoded, second.loaded) == (1, 1) and torch.equal(images, again) and torch.equal(labels, again_labels)
    # other rows, the same rows in another order, or one changed label: another key, never the cached pixels
    relabelled = copies[0].map(lambda row, i: {"label": (row["label"] + 1) % 10 if i == 5 else row["label"]},
                               with_indices=True)
    others = [full[0].select(range(1, 97)), copies[0].select([1, 0, *range(2, 96)]), relabelled]
    assert len({content_fingerprint(rows) for rows in [copies[0], *others]}) == 4
    assert content_fingerprint(copies[1]) == content_fingerprint(copies[0])
    assert content_fingerprint(copies[0].with_format("torch")) == content_fingerprint(copies[0])  # values, not reprs


def test_batched_crops_and_flips_are_torchvisions_pad_crop_and_hflip(cifar):
    pictures = [convert_image(cifar.val[i]["image"], "RGB") for i in range(6)]
    batch = torch.stack([TF.pil_to_tensor(p) for p in pictures])  # uint8
    shifts = torch.tensor([[-2, 1], [0, 0], [2, -2], [1, 2], [-1, -1], [2, 2]])
    flips = torch.tensor([True, False, True, False, True, False])
    zeros, reflected = crop_flip(batch, shifts, flips, "zeros"), crop_flip(batch.float(), shifts, flips, "reflect")
    padded_reflect = F.pad(batch.float(), (2, 2, 2, 2), mode="reflect")
    for i, picture in enumerate(pictures):
        dy, dx = shifts[i].tolist()
        crop = TF.pil_to_tensor(TF.crop(TF.pad(picture, 2), 2 + dy, 2 + dx, 32, 32))  # RandomCrop(padding=2)'s crop
        reflect = padded_reflect[i, :, 2 + dy:34 + dy, 2 + dx:34 + dx]
        if flips[i]:
            crop, reflect = TF.hflip(crop), reflect.flip(-1)
        assert torch.equal(zeros[i], crop) and torch.equal(reflected[i], reflect)
    assert (zeros[0, :, :2] == 0).all() and (zeros[0, :, 2:] > 0).any()  # shifted up by 2: black rows on top
    # draws: shifts within the padding, about half flipped, the same from the same seed
    shifts, flips = draw_crop_flip(4000, 2, torch.Generator().manual_seed(0))
    assert shifts.min() == -2 and shifts.max() == 2 and 0.47 < flips.float().mean() < 0.53
    assert torch.equal(draw_crop_flip(10, 2, torch.Generator().manual_seed(3))[0],
                       draw_crop_flip(10, 2, torch.Generator().manual_seed(3))[0])
    views = tta_views(batch.float(), "flip-translate")
    assert len(views) == 6 and sum(w for w, _ in views) == 1.0
    assert torch.equal(views[1][1], batch.float().flip(-1)) and torch.equal(views[2][1][:, :, 1:, 1:], batch.float()[:, :, :-1, :-1])


def test_the_whitened_first_layer_decorrelates_the_training_patches(cifar):
    model = timm.create_model("cifar_airnet_small", num_classes=10)
    decoded = decoded_for_model(model, cifar.train)
    images = decoded.normalize(decoded.images)
    conv = whiten_first_conv(model, images)
    assert conv is first_conv(model) and conv.out_channels == 16
    eigenvalues, _ = patch_whitening(images, (3, 3))
    outputs = F.conv2d(images, conv.weight[:8])  # the 8 leading directions, on every patch
    flat = outputs.permute(0, 2, 3, 1).reshape(-1, 8).double()
    covariance = flat.T @ flat / len(flat)
    expected = torch.diag((eigenvalues[:8] / (eigenvalues[:8] + WHITENING_EPS)).double())
    assert torch.allclose(covariance, expected, atol=1e-3), covariance.diag()
    assert torch.equal(conv.weight[8:16], -conv.weight[:8])


SETTINGS = dict(model="cifar_airnet_small", from_scratch=True, head="softmax", train_limit=512, val_limit=64,
                batch_size=64, epochs=2, lr=0.05, data_on_device=True, augmentation="crop-flip", crop_padding=2,
                pad_mode="reflect", flip="alternating", whiten_stem="frozen", opt="lookahead_sgd", checkpoint_every=3,
                feature_bank=False, workers=0, progress=False)


@pytest.mark.slow
def test_a_run_on_decoded_tensors_trains_and_resumes_exactly(shared_data, tmp_path, monkeypatch):
    from timm_isomax.train import trainer
    from timm_isomax.train.state import CHECKPOINT_NAME, read_resume_state

    settings = dict(SETTINGS, dataset=str(shared_data / "cifar10"), decoded_cache=str(tmp_path / "cache"))
    uninterrupted = train(TrainConfig(**settings, output=str(tmp_path / "uninterrupted")))
    make_optimization = trainer.make_optimization

    def interrupted(*args, **kwargs):  # Ctrl-C in the loss of the 5th step of epoch 2 (8 steps an epoch)
        opt = make_optimization(*args, **kwargs)
        loss_fn, calls = opt["loss_fn"], [0]

        def loss(logits, targets):
            calls[0] += 1
            if calls[0] == 8 + 5:
                raise KeyboardInterrupt
            return loss_fn(logits, targets)
        return dict(opt, loss_fn=loss)

    monkeypatch.setattr(trainer, "make_optimization", interrupted)
    output = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**settings, output=str(output)))
    state = read_resume_state(output / TRAINING_DIR / CHECKPOINT_NAME)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 3)  # the mid-epoch checkpoint after step 3 of epoch 2
    monkeypatch.setattr(trainer, "make_optimization", make_optimization)
    train(TrainConfig(**settings, output=str(output), resume=True))
    resumed, expected = weights(output), weights(uninterrupted)
    assert resumed.keys() == expected.keys() and all(torch.equal(resumed[k], expected[k]) for k in expected)
    # the frozen stem is the whitening of the training patches, unchanged by training
    model = timm.create_model("cifar_airnet_small", num_classes=10)
    splits = load_labelled_splits(settings["dataset"], train_limit=512, val_limit=64)
    decoded = decoded_for_model(model, splits.train)
    stem = whiten_first_conv(model, decoded.normalize(decoded.images)).weight
    assert torch.equal(expected["stem.0.weight"], stem)
    log = (uninterrupted / TRAINING_DIR / "log.jsonl").read_text().splitlines()
    assert len(log) == 2 and all(0.1 < json.loads(line)["val_accuracy"] <= 1 for line in log)


def test_decoded_settings_are_checked_and_leave_older_runs_records_alone():
    base = dict(model="cifar_airnet", dataset="d", output="o")
    record = TrainConfig(**base).to_json()
    assert not {"data_on_device", "decoded_cache", "flip", "pad_mode", "whiten_stem", "tta"} & set(record)
    with pytest.raises(ValueError, match="add --augmentation crop-flip"):
        TrainConfig(**base, data_on_device=True)
    with pytest.raises(ValueError, match="add --data-on-device"):
        TrainConfig(**base, flip="alternating")
    with pytest.raises(ValueError, match="tta must be one of none, flip, flip-translate"):
        TrainConfig(**base, tta="mirror")


def test_where_the_decoded_images_are_kept_may_change_when_a_run_resumes():
    # like the feature cache: the cache is keyed by what it holds, so its folder is where, not what, a run trains
    from timm_isomax.train.state import changed_settings

    run = TrainConfig(model="cifar_airnet", dataset="../shared/data/cifar10", output="out", data_on_device=True,
                      augmentation="crop-flip", decoded_cache="outputs/feature_cache")
    moved = dataclasses.replace(run, decoded_cache="/elsewhere/feature_cache", output="/elsewhere/out")
    assert changed_settings(run.to_json(), moved.to_json()) == []
    assert changed_settings(run.to_json(), dataclasses.replace(run, pad_mode="reflect").to_json()) == ["pad_mode"]
