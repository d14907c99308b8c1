"""Method registry: `get(name)` returns the declarative `Method` that the trainer runs."""
from __future__ import annotations

import importlib

from gazejax.engine.api import DataBundle, Method, Stage  # noqa: F401  (re-exported)

_METHODS = {
    "san_aab": "gazejax.methods.san_aab:METHOD",
    "ggcam": "gazejax.methods.ggcam:METHOD",
    "cxr_san": "gazejax.methods.cxr_san:METHOD",
    "cxrgazelearn": "gazejax.methods.cxrgazelearn:METHOD",
    "gazat": "gazejax.methods.gazat:METHOD",
}


def get(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"unknown method family {name!r}; known: {', '.join(sorted(_METHODS))}")
    module_name, attr = _METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), attr)
