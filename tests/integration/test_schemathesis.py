"""The OpenAPI document against the running daemon: schemathesis generates
requests from it and checks every answer against it, and finds nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
from daemon import file_config
from fixtures import HgwebServer
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

pytestmark = pytest.mark.integration

#: Examples per operation and phase: enough to cover every documented status
#: of every route, few enough that the run takes well under a minute.
MAX_EXAMPLES = 40
SEED = 20261128
#: Every check but positive_data_acceptance: the document cannot state every
#: input archiverd refuses (query parameters must be printable in Python's
#: sense, which no JSON Schema regex can say), and its empty-rev route is
#: always a 400. Refusals it does state are checked by negative_data_rejection.
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
        "missing_required_header",
        "allow_header_conformance",
    ]
)


@pytest_twisted.ensureDeferred
async def test_schemathesis_finds_nothing_against_the_running_daemon(
    start_archiverd, hgweb: HgwebServer, tmp_path: Path
) -> None:
    """Every answer to schemathesis' requests (both valid and invalid input,
    on every operation of the document) has a documented status, content
    type, headers and body, and none is a server error."""
    config = file_config(hgweb.url_template, str(tmp_path))
    # A second source, of the other kind, serving only some repos (403s).
    config["sources"]["hgtemplate"] = {
        "kind": "template",
        "url_template": hgweb.url_template,
        "repos": ["mozilla-central", "projects/*"],
    }
    daemon = await start_archiverd(config)
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        [
            "-m",
            "schemathesis.cli",
            "run",
            f"{daemon.base_url}/archiver/openapi.json",
            f"--checks={CHECKS}",
            f"--max-examples={MAX_EXAMPLES}",
            f"--seed={SEED}",
            "--generation-deterministic",
            "--workers=1",
            "--max-redirects=0",
            "--request-timeout=20",
            "--phases=examples,coverage,fuzzing",
            "--no-color",
        ],
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        path=str(tmp_path),
        reactor=reactor,
    )
    report = (out + err).decode("utf-8", "replace")
    assert code == 0, report
