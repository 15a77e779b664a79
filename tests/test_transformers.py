"""transformers loads an IsoMax+ model folder (TimmWrapper) and gives timm's logits; the pipeline runs."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_isomax  # noqa: F401  (registers the architecture transformers' TimmWrapper asks timm for)
from timm_isomax.hub import save_pretrained

transformers = pytest.importorskip("transformers")


def test_auto_model_and_pipeline_load_an_isomaxplus_folder(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t_isomaxplus", num_classes=5).eval()
    folder = save_pretrained(model, tmp_path / "folder", label_names=["cat", "dog", "emu", "fox", "gnu"])
    wrapped = transformers.AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    assert type(wrapped).__name__ == "TimmWrapperForImageClassification"
    assert wrapped.config.id2label[2] == "emu"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(wrapped(pixel_values=x).logits, model(x), rtol=0, atol=0)
    classify = transformers.pipeline("image-classification", model=str(folder))
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))
    predictions = classify(image, top_k=5)
    assert sorted(p["label"] for p in predictions) == ["cat", "dog", "emu", "fox", "gnu"]
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)  # softmax of the logits
