"""`package.module:attribute` import paths, as recipes name user code (strategies, answer functions)."""

from __future__ import annotations

import importlib


def import_object(path: str, what: str):
    """The object at `package.module:attribute` (dots in the attribute walk into it); ValueError naming `what` and
    the fix when the path is malformed, the module does not import, or the attribute is missing."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what} {path!r}: write an import path as package.module:name")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the module's own error while importing
        raise ValueError(f"{what} {path!r}: cannot import {module_name} ({type(err).__name__}: {err}); check that "
                         "the module is installed or on PYTHONPATH") from err
    value = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ValueError(f"{what} {path!r}: module {module_name} has no attribute {attribute!r}")
        value = getattr(value, part)
    return value
