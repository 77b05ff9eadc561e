"""RelengAPI's archiver_client.py (mozilla/build-tools, 2016), its flow ported
to Python 3 for the contract tests: what the CI fleets run against archiverd.

It sends ``User-Agent: Python-urllib/2.7``; follows a 302 to the archive;
on a 202 polls the absolute ``Location`` (at once, then after each sleep)
until ``state == "SUCCESS"``, ``max_retries`` polls at most; takes
``s3_urls[region]`` (else any); exits 1 on SUCCESS with no URL, or when the
polls run out; an HTTP error anywhere sends it back to ask for the archive
again (its outer retry loop), up to ``max_retries`` times, then exit 3.
It extracts the members under ``<basename(repo)>-<rev as given>/<subdir>/``,
that prefix stripped, and skips every other member without a word.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUCCESS_CODE, FAILURE_CODE, INFRA_CODE = 0, 1, 3
AGENT = "Python-urllib/2.7"


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


@dataclass
class OldClient:
    """One run of the old client; what it did is kept for the assertions."""

    base_url: str
    region: str = "us-west-2"
    sleeptime: float = 0.5
    max_retries: int = 10
    #: Every URL it asked for, in order (archive requests, polls, downloads).
    asked: list[str] = field(default_factory=list)
    polls: int = 0
    slept: float = 0.0
    log: list[str] = field(default_factory=list)

    def _open(self, url: str) -> Any:
        self.asked.append(url)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        opener.addheaders = [("User-Agent", AGENT)]
        return opener.open(url, timeout=60)

    def _sleeps(self):  # type: ignore[no-untyped-def]
        """The client's retrier: max_retries attempts, sleeps ×1.5 between."""
        sleeptime = self.sleeptime
        for attempt in range(self.max_retries):
            yield attempt
            if attempt == self.max_retries - 1:
                break
            time.sleep(sleeptime)
            self.slept += sleeptime
            sleeptime *= 1.5

    def run(self, repo: str, rev: str, subdir: str, destination: Path) -> int:
        """The client's exit code; files extracted into ``destination``."""
        url = (
            f"{self.base_url}/archiver/hgmo/{repo}/{rev}?&preferred_region="
            f"{self.region}&suffix=tar.gz&subdir={subdir}"
        )
        try:
            response = self._archive_response(url)
            root = posixpath.join(f"{os.path.basename(repo)}-{rev}", subdir, "")
            with tarfile.open(fileobj=response, mode="r|gz") as tar:
                for member in tar:
                    if not member.name.startswith(root):
                        continue
                    member.name = member.name.replace(root, "")
                    tar.extract(member, destination, filter="tar")
        except _Exit as e:
            return e.code
        except tarfile.TarError:
            return INFRA_CODE
        return SUCCESS_CODE

    def _archive_response(self, url: str) -> Any:
        response = None
        for attempt in self._sleeps():
            try:
                response = self._open(url)
                if response.status == 202:
                    response = self._from_task(response.headers["location"])
                if response.status == 200:
                    return response
            except urllib.error.HTTPError as e:
                self.log.append(f"HTTP {e.code} from {e.url}")
                if attempt == self.max_retries - 1:
                    raise _Exit(INFRA_CODE) from None
        raise _Exit(INFRA_CODE)

    def _from_task(self, url: str) -> Any:
        result: dict[str, Any] = {}
        for _ in self._sleeps():
            self.polls += 1
            with self._open(url) as answer:
                result = json.loads(answer.read())["result"]
            if result["state"] == "SUCCESS":
                break
            self.log.append(f"current task status: {result['status']}")
        if result.get("state") != "SUCCESS":
            raise _Exit(FAILURE_CODE)
        urls = result.get("s3_urls")
        if not urls:
            self.log.append(f"no s3 URL, task status: {result['status']}")
            raise _Exit(FAILURE_CODE)
        return self._open(urls.get(self.region) or next(iter(urls.values())))
