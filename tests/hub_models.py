"""A small IsoMax+ model folder and the hub config that measured it, and the ways a user's mix-up changes such a
folder: shared by the Hub, card, push and reproduce tests."""
import json
import shutil
from pathlib import Path

import safetensors.torch
import timm
import torch

import timm_isomax  # noqa: F401  (registers resnet10t_isomaxplus)
from timm_isomax.hub import (CONFIG_NAME, WEIGHTS_NAME, HubConfig, load_hub_config, save_pretrained, weights_sha256,
                             write_hub_config)

ARCH = "resnet10t_isomaxplus"


def saved_model(folder, num_classes=10, tag="test", seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, num_classes=num_classes).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a wrong load shows
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    # as a trained model has it (its card's usage snippet prints is_ood); measured_hub_config records the same
    model.update_ood_config(threshold=-1.5, tpr=0.95, fitted_on="mnist:test")
    save_pretrained(model, folder, label_names=[f"c{i}" for i in range(num_classes)], tag=tag,
                    data_config={"input_size": (3, 32, 32)})
    return model


def measured_hub_config(folder: Path, tmp_path: Path) -> HubConfig:
    config = HubConfig(
        repo_id="test-org/resnet10t_isomaxplus.test", architecture=ARCH, tag="test", source_checkpoint=str(folder),
        dataset=dict(name="mnist", path="../shared/data/mnist", hub_id="ylecun/mnist", train_split="train",
                     eval_split="test"),
        ood_datasets=[dict(name="notmnist", path="../shared/data/notmnist", split="test")],
        finetune_args=["--model", ARCH, "--from-scratch", "--output", str(folder)], license="apache-2.0",
        label_names=[f"c{i}" for i in range(10)], data_config={"input_size": [3, 32, 32]},
        metrics=dict(accuracy=0.9, id_images=100, ood_images={"notmnist": 100}, score="mds",
                     ood={"notmnist": dict(auroc=0.8, fpr_at_95_tpr=0.5), "mean": dict(auroc=0.8, fpr_at_95_tpr=0.5)},
                     conventions={"auroc": "AUROC, ID positive"}, threshold=-1.5, threshold_tpr=0.95,
                     threshold_fitted_on="mnist:test", temperature=1.0, command="timm-isomax reproduce x.json",
                     weights_sha256=weights_sha256(folder / WEIGHTS_NAME)))
    return load_hub_config(write_hub_config(config, tmp_path / "test.json"))


def other_folder(saved, tmp_path, name, change):
    # a copy of the measured folder with one thing changed, as a user's mix-up would leave it
    folder = tmp_path / name
    shutil.copytree(saved[1], folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    change(folder, config)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder


def other_model():
    torch.manual_seed(1)
    return timm.create_model(ARCH, num_classes=10)


def other_weights(folder, config):
    # same architecture, labels and preprocessing, other weights, saved properly (its own hash recorded)
    save_pretrained(other_model(), folder, label_names=config["label_names"], data_config={"input_size": (3, 32, 32)})
    config.clear()
    config.update(json.loads((folder / CONFIG_NAME).read_text()))


def swapped_weights_file(folder, config):
    # another model.safetensors copied over the folder's own
    state_dict = {k: v.contiguous() for k, v in other_model().state_dict().items()}
    safetensors.torch.save_file(state_dict, str(folder / WEIGHTS_NAME))
