"""Where a model's weights come from, shared by the registry (which fills it), the entrypoints' builder and the
factory: the pretrained-cfg fields that locate weights, and the published IsoMax tags registered from hub configs."""
from typing import TYPE_CHECKING, Dict

if TYPE_CHECKING:
    from ..hub import HubConfig

__all__ = ["WEIGHT_SOURCE_KEYS", "PUBLISHED_TAGS"]

# pretrained_cfg fields that say where weights are; an overlay that sets one replaces the registry source.
WEIGHT_SOURCE_KEYS = ("file", "url", "hf_hub_id", "state_dict")
# "<isomax arch>.<tag>" -> hub config, for the tags of IsoMax weights: loaded whole, never as base SoftMax weights
PUBLISHED_TAGS: Dict[str, "HubConfig"] = {}
