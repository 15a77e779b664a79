"""The benchmark: protocols (JSON), resumable runs over heads x seeds, and their report (:mod:`.protocol_runs`)."""
from .protocol_runs import *  # noqa: F401,F403
from .protocol_runs import __all__ as _runs_all

__all__ = list(_runs_all)
