"""What a published model carries about its OOD score beyond the logits: the card says how the score was chosen
(the run's validation AUROCs) and describes the feature bank, which travels to the Hub beside the weights and
which loading finds again."""
import json

import pytest
import timm
import torch

from timm_isomax import ood_scores
from timm_isomax.feature_scores import FEATURE_BANK_NAME, FeatureBank, feature_bank_of, knn
from timm_isomax.hub import prepare_repo_folder, render_model_card

from .conftest import prelogit_features
from .hub_models import saved_model, measured_hub_config


@pytest.fixture(scope="module")
def folder_with_bank(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("model_with_bank")
    model = saved_model(folder)
    features, labels = prelogit_features(model, str(shared_data / "mnist"), "train", 200)
    FeatureBank.build(features, labels, source="mnist:train").save(folder)
    (folder / "training").mkdir()
    selection = dict(chosen="knn50", sets=["jigsaw"], criterion="highest mean AUROC (ID positive) over the OOD "
                     "validation sets", aurocs={"knn50": {"jigsaw": 0.91, "mean": 0.91}, "mds": {"jigsaw": 0.8, "mean": 0.8}})
    (folder / "training" / "evaluation.json").write_text(json.dumps(dict(score="knn50", chosen_by="validation",
                                                                          selection=selection)))
    return folder, features


def test_the_card_says_how_the_score_was_chosen_and_what_the_bank_holds(folder_with_bank, tmp_path):
    folder, _ = folder_with_bank
    card = render_model_card(measured_hub_config(folder, tmp_path), folder)
    assert "OOD score `knn50`, chosen on validation data only" in card and "(jigsaw)" in card
    assert "`knn50` 91.00, `mds` 80.00" in card  # the validation AUROCs behind the choice, best first
    assert f"Feature bank: `{FEATURE_BANK_NAME}`, 200 training features of width 512 (0.4 MB; from mnist:train)" in card
    assert "Feature bank" not in render_model_card(measured_hub_config(folder, tmp_path))  # no folder, no claim


def test_a_card_whose_score_is_a_posthoc_detector_names_the_extra_it_needs(folder_with_bank, tmp_path):
    import dataclasses

    config = measured_hub_config(folder_with_bank[0], tmp_path)
    extra = "install it with `pip install 'timm-isomax[posthoc]'`"
    assert extra not in render_model_card(config)
    card = render_model_card(dataclasses.replace(config, metrics=dict(config.metrics, score="mahalanobis")))
    assert "Its OOD score, `mahalanobis`, is pytorch-ood's detector fitted on the feature bank" in card and extra in card
    assert card.index(extra) < card.index("```python")  # said before the snippet that would raise without it


def test_the_bank_goes_to_the_hub_with_the_weights_and_loads_back(folder_with_bank, tmp_path):
    folder, features = folder_with_bank
    out = tmp_path / "repo"
    files = prepare_repo_folder(folder, measured_hub_config(folder, tmp_path), out)
    assert [path.name for path in files] == ["config.json", "model.safetensors", FEATURE_BANK_NAME, "README.md"]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    bank = feature_bank_of(model)
    assert bank is not None and torch.equal(bank.features, FeatureBank.load(folder).features)
    # inference reads the bank: ood_scores with knn50 is the 50th-neighbour similarity to the loaded bank
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = knn(model.forward_head(model.forward_features(images), pre_logits=True), bank, 50)
    torch.testing.assert_close(ood_scores(model, images, score="knn50"), expected)
