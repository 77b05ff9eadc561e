"""Pre-warm: archive new pushes before anyone asks.

- :mod:`~archiverd.prewarm.feeds`: what an hgweb upstream says was pushed
  (Mozilla's pushlog, or the heads of branches and bookmarks);
- :mod:`~archiverd.prewarm.watcher`: polls each watched repo (one daemon per
  repo in a fleet) and keeps its position;
- :mod:`~archiverd.prewarm.hooks`: GitHub, Gitea and GitLab push webhooks,
  signatures checked;
- :mod:`~archiverd.prewarm.shapes`: which archives of a new head to make
  (configured, and learned from what clients ask for);
- :mod:`~archiverd.prewarm.warm`: claims pre-warm tasks, counts pre-warm hits;
- :mod:`~archiverd.prewarm.state`: positions and learned shapes kept across
  restarts (a file, or Redis);
- :mod:`~archiverd.prewarm.service`: the service that ties them together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

#: Starts pre-warm tasks for a new head: (source, repo, node).
Warm = Callable[[str, str, str], Awaitable[Any]]
