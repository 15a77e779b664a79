"""The module timm's registry files the generated ``<arch>_isomaxplus`` / ``<arch>_isomax`` entrypoints
under (``timm.list_models(module="isomax_models")``).

timm's ``register_model`` reads ``default_cfgs`` from an entrypoint's module; :mod:`timm_isomax.models.registry`
fills this dict before registering. Nothing else belongs here: timm appends every registered name to
this module's ``__all__``.
"""
default_cfgs: dict = {}
__all__: list = []
