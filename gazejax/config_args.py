"""Parsing of the config-file argument: `configs/x.py:key=val,key=val` -> dict (used by every config)."""
from __future__ import annotations


def parse_arg(arg: str | None, **defaults) -> dict:
    """Parses "k=v,k=v" into a dict over `defaults` (unknown keys are an error, so typos do not pass silently)."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ValueError(f"config argument {item!r} is not key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {', '.join(sorted(defaults))}")
        out[key] = value
    return out
