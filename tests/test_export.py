"""torch.compile (no graph breaks in the head) and ONNX export of an IsoMax+ model, checked numerically."""
import numpy as np
import pytest
import timm
import torch

import timm_isomax  # noqa: F401  (registers the _isomaxplus archs)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("resnet10t_isomaxplus", num_classes=10).eval()


def test_head_compiles_without_graph_breaks_and_matches(model):
    compiled = torch.compile(model.head, fullgraph=True)  # fullgraph=True raises on any graph break
    features = torch.randn(4, model.head_hidden_size)
    torch.testing.assert_close(compiled(features), model.head(features))


def test_whole_model_compiles_and_matches(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-4)


def test_onnx_export_runs_in_onnxruntime_and_matches(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "resnet10t_isomaxplus.onnx"
    x = torch.randn(2, 3, 64, 64)
    torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(str(path))
    for batch in (x, torch.randn(5, 3, 64, 64)):
        (logits,) = session.run(None, {"images": batch.numpy()})
        np.testing.assert_allclose(logits, model(batch).detach().numpy(), rtol=1e-4, atol=1e-5)
