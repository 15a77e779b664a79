"""Model folders in timm's Hub format and their publication on the Hugging Face Hub.

One module per concern: the folder format (:mod:`.folder`: save, read, check), the weights' provenance
(:mod:`.provenance`), downloads (:mod:`.download`) and the requests under them (:mod:`.network`), hub configs
(:mod:`.config`: one JSON file per published model), the model card (:mod:`.card`) and publishing
(:mod:`.publish`). Retraining and re-measuring a hub config's model is :mod:`timm_isomax.train.reproduce`.

``timm_isomax.hub`` was one module before it became this package; its names stay here.
"""
from .._lazy import lazy_exports

# public name -> the module of this package that defines it, imported when the name is first read
_EXPORTS = {
    "save_pretrained": "folder", "read_config": "folder", "validate_model_config": "folder",
    "check_model_folder": "folder", "output_folder_problem": "folder", "CONFIG_NAME": "folder",
    "WEIGHTS_NAME": "folder", "CARD_NAME": "folder", "ISOMAX_CONFIG_KEY": "folder", "IMPORT_HINT": "folder",
    "weights_sha256": "provenance", "recorded_provenance": "provenance", "PROVENANCE_KEY": "provenance",
    "hub_downloads": "download", "timm_weight_downloads": "download",
    "HubConfig": "config", "load_hub_config": "config", "write_hub_config": "config",
    "packaged_hub_configs": "config",
    "render_model_card": "card", "write_model_card": "card", "model_card_eval_results": "card",
    "prepare_repo_folder": "publish", "push_to_hub": "publish", "folder_mismatch": "publish",
    "check_folder_matches": "publish",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
