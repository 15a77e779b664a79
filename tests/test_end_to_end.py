"""A small _isomaxplus model trained by the trainer on real data reaches a stated accuracy and detects OOD inputs."""
import importlib.util
import json

import numpy as np
import pytest

from timm_isomax import auroc
from timm_isomax.train import EVALUATION_NAME, TRAINING_DIR, TrainConfig, train

POSTHOC = importlib.util.find_spec("pytorch_ood") is not None  # the post-hoc detectors' extra


@pytest.mark.slow
def test_isomaxplus_on_mnist_detects_fashion_mnist_and_notmnist(shared_data, tmp_path):
    output = train(TrainConfig(model="resnet10t", from_scratch=True, in_chans=1, img_size=32, mean=(0.5,), std=(0.5,),
                               augmentation="none", dataset=str(shared_data / "mnist"), train_limit=5000, val_limit=1000,
                               ood_datasets=[str(shared_data / "fashion_mnist"), str(shared_data / "notmnist")],
                               ood_eval_every=0, epochs=2, batch_size=64, lr=0.05, workers=0, progress=False,
                               output=str(tmp_path / "mnist_isomaxplus")))
    row = json.loads((output / TRAINING_DIR / EVALUATION_NAME).read_text())
    assert row["head"] == "isomaxplus" and row["val_images"] == 1000 and row["ood_images"]["notmnist"] == 1000
    # measured (torch 2.14.1): see the numbers in the assertion message
    rng = np.random.default_rng(0)
    random_auroc = auroc(rng.random(1000), rng.random(1000))
    aurocs = {name: row["metrics"]["mds"][name]["auroc"] for name in ("fashion_mnist", "notmnist")}
    assert row["accuracy"] >= 0.94, (row["accuracy"], aurocs)
    assert all(value >= 0.88 > random_auroc + 0.3 for value in aurocs.values()), (row["accuracy"], aurocs)
    # every score of the head: its logit scores, the feature scores, KNN on the bank of the 5000 training features
    # saved beside the model and (with pytorch-ood) Mahalanobis fitted on it
    assert set(row["metrics"]) == {"mds", "entropic", "energy", "msp", "norm_cosine", "feature_norm", "knn10", "knn50",
                                   "knn200", *(("mahalanobis",) if POSTHOC else ())}
    assert row["unavailable_scores"] == {} and (row["feature_bank"]["rows"], row["feature_bank"]["width"]) == (5000, 512)
    # no score set: chosen on validation only (ID validation against its jigsaw puzzles), never on the OOD test sets
    selection = row["selection"]
    assert row["chosen_by"] == "validation" and selection["sets"] == ["jigsaw"]
    assert set(selection["aurocs"]) == set(row["metrics"])
    assert row["score"] == max(selection["aurocs"], key=lambda name: selection["aurocs"][name]["mean"])
    # no test_split: the validation images (held out of the training split) stand in for the test split
    assert row["id_split"] == "train" and row["test_images"] == 1000
