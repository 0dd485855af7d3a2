"""Dotted field paths into a job as a plain dict (`train.epochs`, `search.space.train.lr`), and
the merge that `extends:` does."""

from __future__ import annotations

import copy
from typing import Any


def deep_merge(base: dict, update: dict) -> dict:
    """Mappings merge key by key; anything else (lists included) in `update` replaces."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "space":
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def split_path(dotted: str) -> list[str]:
    """Field path to keys. Search-space keys are dotted paths themselves: `search.space.train.lr`
    addresses the single key `train.lr` of `search.space`."""
    if dotted.startswith("search.space."):
        return ["search", "space", dotted[len("search.space."):]]
    return dotted.split(".")


def set_path(data: dict, dotted: str, value: Any) -> dict:
    """A copy of `data` with the field at `dotted` set to `value`, creating mappings on the way."""
    result = copy.deepcopy(data)
    node = result
    keys = split_path(dotted)
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    return result
