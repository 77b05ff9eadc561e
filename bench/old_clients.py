"""The old client's flow (RelengAPI's archiver_client.py, ported in
``tests/integration/oldclient.py``) against ``twistd -n archiverd`` on real
hgweb: from its first request to the extracted files, for a cold
mozharness-sized archive with ``[tasks] hold`` 0 and 5, and until it gives
up on an unknown rev. At its default sleep (10 s), as CI runs it.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import MIB, ROOT, Daemon, Row

REPO = "projects/ash"
SUBDIR = "testing/mozharness"
#: The client's default --sleeptime.
SLEEPTIME = 10.0


def _config(hgweb_template: str, root: Path, hold: float) -> str:
    return f"""
[sources.hgmo]
url_template = "{hgweb_template}"
[storage]
backend = "file"
[storage.file]
root = "{root}"
regions = ["us-west-2"]
[tasks]
hold = {hold}
"""


def _mozharness(seed: int) -> dict[str, bytes | None]:
    """~300 files, ~3 MiB: about what testing/mozharness weighs."""
    import random

    rng = random.Random(seed)
    files: dict[str, bytes | None] = {
        f"{SUBDIR}/mozharness/m{i:03}.py": rng.randbytes(8 * 1024) for i in range(300)
    }
    files[f"{SUBDIR}/blob.bin"] = rng.randbytes(MIB // 2)
    files["README"] = f"run {seed}\n".encode()
    return files


def old_client_flow(runs: int, work: Path) -> list[Row]:
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from fixtures import HgwebServer
    from oldclient import FAILURE_CODE, SUCCESS_CODE, OldClient

    held: dict[float, list[float]] = {0: [], 5: []}
    polls: dict[float, list[int]] = {0: [], 5: []}
    unknown: list[float] = []
    unknown_polls: list[int] = []
    with tempfile.TemporaryDirectory() as tmp, HgwebServer(Path(tmp)) as hgweb:
        daemons = {
            hold: Daemon(
                work / f"old-client-hold-{hold:g}",
                _config(hgweb.url_template, work / f"data-{hold:g}", hold),
            )
            for hold in held
        }
        try:
            for run in range(runs):
                for hold, daemon in daemons.items():
                    node = hgweb.commit(REPO, _mozharness(run * 10 + int(hold)), "c")
                    out = Path(tmp) / f"out-{run}-{hold:g}"
                    client = OldClient(daemon.url, sleeptime=SLEEPTIME)
                    started = time.monotonic()
                    code = client.run(REPO, node[:12], SUBDIR, out)
                    held[hold].append(time.monotonic() - started)
                    polls[hold].append(client.polls)
                    if code != SUCCESS_CODE or not (out / "blob.bin").exists():
                        raise RuntimeError(f"old client failed: {code} {client.log}")
                    shutil.rmtree(out)
                client = OldClient(daemons[5].url, sleeptime=SLEEPTIME)
                started = time.monotonic()
                code = client.run(REPO, f"{run:x}" * 12, SUBDIR, Path(tmp) / "none")
                unknown.append(time.monotonic() - started)
                unknown_polls.append(client.polls)
                if code != FAILURE_CODE:
                    raise RuntimeError(f"unknown rev ended with {code}: {client.log}")
        finally:
            for daemon in daemons.values():
                daemon.stop()
    ratio = [h5 / h0 for h5, h0 in zip(held[5], held[0], strict=True)]
    return [
        Row(
            "11a. old client, cold mozharness-sized archive: time to extracted "
            "files, hold 5 ÷ hold 0",
            "< 0.2",
            ratio,
            lambda m: m < 0.2,
            notes=f"hold 5: {max(held[5]):.2f} s, polls {max(polls[5])}; "
            f"hold 0: {min(held[0]):.2f}–{max(held[0]):.2f} s, polls "
            f"{min(polls[0])} (one {SLEEPTIME:g} s sleep)",
        ),
        Row(
            "11b. old client, unknown rev: time until it gives up",
            "< 2 s",
            unknown,
            lambda m: m < 2,
            unit="s",
            notes=f"polls {max(unknown_polls)}, exit 1; before: 10 polls, 514 s "
            "at its defaults (the old service: one sleep, ~9 s)",
        ),
    ]
