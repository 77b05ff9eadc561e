"""``archiverd check --config FILE`` (issue 14): one line per check against
real storage (moto, the file backend) and a real upstream (hgweb), a
non-zero exit on any failure, and no probe left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import S3Buckets, free_port
from processes import env, write_config, write_file_config

pytestmark = pytest.mark.integration


def check(config: Path) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, "-m", "archiverd.check", "check", "--config", str(config)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr == "", done.stderr
    return done.returncode, done.stdout.splitlines()


def test_a_healthy_s3_deployment_passes_and_leaves_nothing(
    tmp_path: Path, hgweb, s3_buckets: S3Buckets
) -> None:
    config = write_config(tmp_path / "c.toml", hgweb.url_template, s3_buckets)
    code, lines = check(config)
    assert code == 0, lines
    assert lines[0].startswith("ok    config: ")
    assert [line.split(":")[0] for line in lines[1:]] == [
        "ok    storage us-east-1",
        "ok    storage us-west-2",
        "ok    upstream hgmo (127.0.0.1)",
    ]
    assert "wrote, read back and deleted a probe object" in lines[1]
    for region in s3_buckets.buckets:
        assert s3_buckets.keys(region) == []
        assert s3_buckets.pending_uploads(region) == []


def test_a_healthy_file_deployment_passes_and_leaves_nothing(
    tmp_path: Path, hgweb
) -> None:
    root = tmp_path / "data"
    config = write_file_config(tmp_path / "c.toml", hgweb.url_template, root=root)
    code, lines = check(config)
    assert code == 0, lines
    assert len(lines) == 4 and all(line.startswith("ok    ") for line in lines)
    # Objects are stored as <region>/<hh>/<sha256 of the key>[.json]: none
    # is left (the signing key and empty folders remain).
    left = [p for p in root.rglob("*") if p.is_file() and len(p.stem) == 64]
    assert left == []


def test_a_missing_bucket_and_a_dead_upstream_fail_with_one_line_each(
    tmp_path: Path, moto_server
) -> None:
    buckets = S3Buckets(moto_server)  # never created
    dead = f"http://127.0.0.1:{free_port()}/{{repo}}/archive/{{rev}}.{{suffix}}"
    config = write_config(tmp_path / "c.toml", dead, buckets)
    code, lines = check(config)
    assert code == 1
    assert lines[0].startswith("ok    config: ")
    failures = [line for line in lines if line.startswith("FAIL  ")]
    assert len(failures) == 3, lines
    assert "does not exist" in failures[0] and "us-east-1" in failures[0]
    assert failures[2].startswith("FAIL  upstream hgmo (127.0.0.1): ")
    assert "refused" in failures[2].lower()


def test_a_bad_config_is_one_line_and_no_other_check(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[storage]\nbackend = "floppy"\n')
    code, lines = check(config)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("FAIL  config: config error: ")
