"""``timm-isomax demo``: a local web page that shows what a model calls out-of-distribution.

:mod:`.server` holds the models' numbers for one image (plain Python) and the gradio app around them (the ``app``
extra: ``pip install 'timm-isomax[app]'``, imported only when the app is built); :mod:`.page` renders the cards
and the score histogram as HTML.
"""
from .._lazy import lazy_exports

# public name -> the module of this package that defines it, imported when the name is first read
_EXPORTS = {
    "INSTALL_HINT": "server", "gradio_problem": "server", "Distribution": "server", "DemoModel": "server",
    "image_digest": "server", "load_demo_model": "server", "example_images": "server", "explain_all": "server",
    "build_app": "server", "launch_app": "server",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
