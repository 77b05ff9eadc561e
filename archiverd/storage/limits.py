"""``[storage.file] max_bytes``: a size (``"200GiB"``, ``"500G"``) or a
share of the file system (``"80%"``), read without touching storage (the
config checks it) or measured (:func:`limit_bytes`)."""

from __future__ import annotations

import os
import re
import shutil

#: Evicting for size goes down to this share of ``max_bytes``.
LOW_WATER = 0.9
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_UNITS |= {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgtp]i?)b?|b?)\s*\Z", re.IGNORECASE)


def parse_limit(text: str) -> tuple[int | None, float | None]:
    """``"200GiB"`` -> (bytes, None); ``"80%"`` -> (None, 0.8). ValueError
    (naming what is expected) for anything else."""
    text = text.strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            share = -1.0
        if not 0 < share <= 1:
            raise ValueError(f"expected 1% to 100% of the file system, got {text!r}")
        return None, share
    found = _SIZE.match(text)
    if found is None or float(found.group(1)) <= 0:
        raise ValueError(f'expected a size such as "200GiB" or "80%", got {text!r}')
    unit = (found.group(2) or "").lower()
    return int(float(found.group(1)) * _UNITS[unit]), None


def limit_bytes(text: str, root: str | os.PathLike[str]) -> int | None:
    """``max_bytes`` in bytes (a share of the file system holding ``root``
    is measured now); None when no limit is set."""
    if not text:
        return None
    nbytes, share = parse_limit(text)
    if share is not None:
        return int(shutil.disk_usage(root).total * share)
    return nbytes
