"""What archiverd and its clients must agree on over HTTP, in one place.

The server (``archiverd.api``, ``archiverd.tasks``, ``archiverd.keys``) and the
client (``archiverd.client``) both import these. The client runs on CI workers
with nothing but the standard library, so this module imports nothing, and
certainly not Twisted.
"""

from __future__ import annotations

from typing import Final

#: The archive formats a request may name (``?suffix=``), the default first.
SUFFIXES: Final = ("tar.gz", "tar.bz2", "zip")

# Task states, as the status route's ``result.state`` spells them.
PENDING: Final = "PENDING"
STARTED: Final = "STARTED"
PROGRESS: Final = "PROGRESS"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
#: Every task state, in the order a task goes through them.
STATES: Final = (PENDING, STARTED, PROGRESS, SUCCESS, FAILURE)

#: ``result.status`` of a task id the server does not know (its state is
#: PENDING): the old service's words, which its clients may match. Told apart
#: from a queued task by this text alone, so a client knows to ask again.
UNKNOWN_STATUS: Final = "no status available at this point."
#: ``result.status`` of a task in state SUCCESS.
SUCCESS_STATUS: Final = "Task completed! Check 's3_urls' for upload locations."

#: Seconds of ``Retry-After`` on a 503 when the task table is full.
RETRY_AFTER: Final = 5

#: The header of a redirect to a stored archive that gives the archive's
#: sha256 (hex), for the client to check what it downloads against.
SHA256_HEADER: Final = "X-Archive-Sha256"

#: HTTP statuses that carry a ``Location`` to follow.
REDIRECTS: Final = (301, 302, 303, 307, 308)
