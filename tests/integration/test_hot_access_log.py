"""The access_log setting against twistd: one redacted combined-log line per
request in a file of archiverd's own (not twistd's log), written within a
second, and opened again after logrotate moves it (SIGHUP or not)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from polling import eventually_blocking
from processes import logged, open_url, serve, terminate, write_config


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_the_access_log_file_under_twistd(
    tmp_path: Path, hgweb: Any, s3_buckets: Any
) -> None:
    log = tmp_path / "access.log"
    config = write_config(
        tmp_path / "archiverd.toml",
        hgweb.url_template,
        s3_buckets,
        extra=f'access_log = "{log}"',
    )
    proc, base = serve(config, tmp_path)
    try:
        open_url(f"{base}/__lbheartbeat__")
        open_url(f"{base}/archiver/files/r/k?expires=1&signature=s3cr3t")
        eventually_blocking(lambda: len(_lines(log)) == 2, what="two lines")
        first, second = _lines(log)
        assert first.startswith('"127.0.0.1" - - [')
        assert '"GET /__lbheartbeat__ HTTP/1.1" 200' in first
        assert "s3cr3t" not in second and "signature=REDACTED" in second
        assert "__lbheartbeat__" not in logged(tmp_path)  # not twistd's log

        log.rename(tmp_path / "access.log.1")  # logrotate, no signal

        def asked_and_written() -> bool:
            # (what is asked in the second after the move goes to the old file)
            open_url(f"{base}/__lbheartbeat__")
            return len(_lines(log)) > 0

        eventually_blocking(asked_and_written, what="a new file")

        log.rename(tmp_path / "access.log.2")  # logrotate, then SIGHUP
        proc.send_signal(signal.SIGHUP)
        eventually_blocking(log.exists, what="SIGHUP to open the file again")
        open_url(f"{base}/__version__")
        eventually_blocking(lambda: len(_lines(log)) == 1, what="the line")
        assert "__version__" in _lines(log)[0]
        assert proc.poll() is None  # SIGHUP does not stop the daemon
    finally:
        terminate(proc)
    assert len(_lines(tmp_path / "access.log.1")) >= 2
