"""``[sources.NAME.prewarm]``: which repos a source watches for new pushes
and which archives of each new head it makes (:mod:`archiverd.prewarm`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from archiverd.errors import BadRequest
from archiverd.keys import ArchiveRequest
from archiverd.schema import REPO_PATTERN, ConfigError, setting

_REPO = REPO_PATTERN

#: A pre-warmed archive's form: subdir, suffix, and the rev's length.
_SHAPE_KEYS = {"subdir": str, "suffix": str, "rev_length": int}


def _shapes(name: str, shapes: tuple[Any, ...], _: object) -> tuple[Any, ...]:
    kept = []
    for i, shape in enumerate(shapes):
        key = f"{name}[{i}]"
        if not isinstance(shape, dict) or not shape.keys() <= _SHAPE_KEYS.keys():
            raise ConfigError(f"{key}: expected {{ subdir = ..., suffix = ... }}")
        for field_name, kind in _SHAPE_KEYS.items():
            if field_name in shape and type(shape[field_name]) is not kind:
                raise ConfigError(f"{key}.{field_name}: expected {kind.__name__}")
        shape = {"subdir": "", "suffix": "tar.gz", "rev_length": 12, **shape}
        if shape["rev_length"] not in (12, 40):
            raise ConfigError(f"{key}.rev_length: expected 12 or 40")
        try:
            ArchiveRequest.parse("", "r", "0" * 12, shape["suffix"], shape["subdir"])
        except BadRequest as e:
            raise ConfigError(f"{key}: {e}") from None
        kept.append(shape)
    return tuple(kept)


@dataclass(frozen=True)
class PrewarmConfig:
    """[sources.NAME.prewarm]: archive new pushes before anyone asks."""

    #: Repo patterns watched (as in ``repos``); empty: pre-warm is off.
    repos: tuple[str, ...] = setting((), each=_REPO)
    #: Archives made of each new head: { subdir, suffix, rev_length }.
    shapes: tuple[Mapping[str, Any], ...] = setting((), check=_shapes)
    #: Also the shapes clients asked for in the repo within learn_window
    #: seconds (at most learn_max per repo, the latest first).
    learn: bool = False
    learn_window: float = setting(7 * 86400.0, low=60, high=365 * 86400)
    learn_max: int = setting(20, low=1, high=1000)
    #: hgweb: seconds between polls of each watched repo.
    interval: float = setting(10.0, low=1, high=3600)
    #: Pushes (or new heads) archived when catching up after a gap.
    max_gap: int = setting(100, low=1, high=10_000)
    #: The webhook's secret (a string or { env = "NAME" }).
    secret: str = setting(
        "", refuse=(lambda s: 0 < len(s) < 16, "use 16 characters or more")
    )
    #: Where positions and learned shapes are kept without Redis
    #: (default: under the file backend's root).
    state: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.repos)
