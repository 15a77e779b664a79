"""Data package: one JSON file per published model (see hub_configs/README.md).

Installed as ``timm_isomax.hub_configs``; read through :mod:`timm_isomax.hub_config`.
"""
