"""scripts/distance_diagnosis.py measures the distances the heads themselves compute: its nearest distance is
the negated MDS score of an IsoMax head and, divided out by |s|, of an IsoMax+ head."""
import sys
from pathlib import Path

import pytest
import torch

from timm_isomax import IsoMaxHead, IsoMaxPlusHead

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from distance_diagnosis import geometry  # noqa: E402


@pytest.mark.parametrize("head_type", [IsoMaxHead, IsoMaxPlusHead])
def test_nearest_distance_is_the_heads_negated_max_logit(head_type):
    torch.manual_seed(0)
    head = head_type(16, 5)
    torch.nn.init.normal_(head.prototypes)
    if head_type is IsoMaxPlusHead:
        head.distance_scale.data.fill_(3.0)
    features = torch.randn(64, 16) * 7.0
    with torch.no_grad():
        logits = head(features)
    scale = 3.0 if head_type is IsoMaxPlusHead else 1.0
    values = geometry(features, head.prototypes.detach(), unit=head_type is IsoMaxPlusHead)
    torch.testing.assert_close(values["nearest distance"], -logits.max(dim=1).values / scale, rtol=1e-4, atol=1e-4)
    second = -logits.topk(2, dim=1).values[:, 1] / scale
    torch.testing.assert_close(values["2nd - nearest"], second - values["nearest distance"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(values["feature norm"], features.norm(dim=1))
    assert (values["centroid distance"] <= values["mean distance"] + 1e-5).all()  # the triangle inequality
