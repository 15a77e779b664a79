"""Model folders in timm's Hub format and their publication: saving and checking folders (:mod:`.folder`),
hub configs (:mod:`.config`) and weights provenance (:mod:`.provenance`)."""
from .folder import *  # noqa: F401,F403
from .folder import __all__ as _folder_all

__all__ = list(_folder_all)
