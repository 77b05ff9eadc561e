"""deploy/: the systemd unit, the example AWS config, the IAM policy and the
bucket lifecycle rule stay true to the code they deploy."""

from __future__ import annotations

import ast
import configparser
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from archiverd.config import Config, load

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "archiverd.service"
EXAMPLE = DEPLOY / "aws-two-regions.toml"
POLICY = DEPLOY / "iam-policy.json"
LIFECYCLE = DEPLOY / "lifecycle.json"
#: Every module that calls S3: the backend, the refresh of archives close
#: to expiry, and ``archiverd check``'s probe.
S3_SOURCES = [
    ROOT / "archiverd" / "storage" / "s3.py",
    ROOT / "archiverd" / "storage" / "s3_dates.py",
    ROOT / "archiverd" / "check.py",
]

#: The IAM actions each S3 operation needs. An operation archiverd starts to
#: use that is missing here fails the test: add it, and to the policy.
ACTIONS_FOR_OPERATION: dict[str, set[str]] = {
    "HeadBucket": {"s3:ListBucket"},
    "ListObjectsV2": {"s3:ListBucket"},
    # HEAD is authorised as a GET.
    "HeadObject": {"s3:GetObject"},
    "GetObject": {"s3:GetObject"},
    # With x-amz-tagging (the sha256 tag), PutObject also needs the tagging
    # action.
    "PutObject": {"s3:PutObject", "s3:PutObjectTagging"},
    "PutObjectTagging": {"s3:PutObjectTagging"},
    "GetObjectTagging": {"s3:GetObjectTagging"},
    "CreateMultipartUpload": {"s3:PutObject"},
    "UploadPart": {"s3:PutObject"},
    "CompleteMultipartUpload": {"s3:PutObject"},
    "AbortMultipartUpload": {"s3:AbortMultipartUpload"},
    "ListParts": {"s3:ListMultipartUploadParts"},
    "ListMultipartUploads": {"s3:ListBucketMultipartUploads"},
    # Reads the source object, writes the destination (the same key here).
    "CopyObject": {"s3:GetObject", "s3:PutObject"},
    "UploadPartCopy": {"s3:GetObject", "s3:PutObject"},
    "DeleteObject": {"s3:DeleteObject"},
}
#: Actions granted on a bucket's ARN; every other one is on its objects.
BUCKET_ACTIONS = {"s3:ListBucket", "s3:ListBucketMultipartUploads"}
#: Beyond what the operations need: without s3:ListBucket, HEAD on a missing
#: key answers 403 instead of 404, which S3Storage.exists cannot tell apart
#: from a real refusal (see docs/deployment.md).
EXTRA_ACTIONS = {"s3:ListBucket"}
#: Actions granted on a narrower prefix than ``bucket/*``: deleting is for
#: ``archiverd check``'s probe only.
PREFIXED_ACTIONS = {"s3:DeleteObject": "archiverd-check/*"}
#: Calls on a botocore client that are not S3 operations.
CLIENT_HELPERS = {"close", "generate_presigned_url"}


def _operations_used() -> set[str]:
    """The S3 operations archiverd/storage/s3.py calls, in botocore's names.

    Every ``client.<name>(...)`` call, and the operation a presigned URL or
    a paginator is made for (``generate_presigned_url("get_object", ...)``).
    """
    import botocore.session
    from botocore import xform_name

    model = botocore.session.get_session().get_service_model("s3")
    by_method = {xform_name(op): op for op in model.operation_names}
    used = set()
    trees = [ast.parse(source.read_text()) for source in S3_SOURCES]
    for node in (node for tree in trees for node in ast.walk(tree)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "client"
        ):
            continue
        method = node.func.attr
        if method in ("generate_presigned_url", "get_paginator"):
            first = node.args[0]
            assert isinstance(first, ast.Constant), "presigned for an unknown op"
            method = first.value
        elif method in CLIENT_HELPERS:
            continue
        assert method in by_method, f"client.{method}() is not an S3 operation"
        used.add(by_method[method])
    return used


def _resource(action: str, bucket_arn: str) -> str:
    """The resource ``action`` is granted on, in the bucket ``bucket_arn``."""
    if action in BUCKET_ACTIONS:
        return bucket_arn
    return f"{bucket_arn}/{PREFIXED_ACTIONS.get(action, '*')}"


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    statements = policy["Statement"]
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _grants(policy: dict[str, Any]) -> set[tuple[str, str]]:
    """(action, resource) pairs the policy allows."""
    grants = set()
    for statement in _statements(policy):
        assert statement["Effect"] == "Allow"
        for action in _as_list(statement["Action"]):
            for resource in _as_list(statement["Resource"]):
                grants.add((action, resource))
    return grants


@pytest.fixture
def example() -> Config:
    return load(str(EXAMPLE), {})


@pytest.fixture
def policy() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(POLICY.read_text())
    return document


@pytest.fixture
def lifecycle() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(LIFECYCLE.read_text())
    return document


def _unit() -> configparser.ConfigParser:
    # systemd allows a key more than once; the unit should not need to.
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(), source=str(UNIT))
    return parser


def _seconds(value: str) -> float:
    if value.endswith("min"):
        return float(value[:-3]) * 60
    return float(value.removesuffix("s"))


# -- the example config ---------------------------------------------------


def test_example_config_loads_with_s3_in_two_regions(example: Config) -> None:
    """The example config passes archiverd's own loader: s3, two regions."""
    assert example.storage.backend == "s3"
    assert example.storage.regions == ("us-east-1", "us-west-2")
    assert example.storage.s3.endpoint_url is None  # real AWS
    assert example.public_url is not None
    assert "hgmo" in example.sources


def test_example_config_listen_is_an_endpoint_twisted_accepts(
    example: Config,
) -> None:
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    serverFromString(MemoryReactor(), example.listen)


def test_example_config_signed_urls_outlive_no_credentials(example: Config) -> None:
    """botocore renews role credentials 10 minutes before they expire, and a
    presigned URL dies with the credentials that signed it."""
    assert example.storage.signed_url_expiry <= 600


# -- the IAM policy -------------------------------------------------------


def test_the_s3_backend_calls_the_operations_the_test_knows() -> None:
    """The source parse finds the calls (so the checks below check something)."""
    used = _operations_used()
    assert {"HeadObject", "UploadPart", "GetObject", "DeleteObject"} <= used
    unknown = used - set(ACTIONS_FOR_OPERATION)
    assert not unknown, f"add {unknown} to ACTIONS_FOR_OPERATION and the policy"


def test_policy_allows_every_call_the_s3_backend_makes_on_both_buckets(
    policy: dict[str, Any], example: Config
) -> None:
    grants = _grants(policy)
    missing = []
    for operation in sorted(_operations_used()):
        for action in sorted(ACTIONS_FOR_OPERATION[operation]):
            for bucket in example.storage.s3.buckets.values():
                arn = f"arn:aws:s3:::{bucket}"
                resource = _resource(action, arn)
                if (action, resource) not in grants:
                    missing.append(f"{operation}: {action} on {resource}")
    assert not missing


def test_policy_allows_nothing_more(policy: dict[str, Any], example: Config) -> None:
    """Least privilege: only the actions the calls need, only on the example
    config's two buckets, no wildcards in actions."""
    needed = set().union(*(ACTIONS_FOR_OPERATION[op] for op in _operations_used()))
    grants = _grants(policy)
    assert {action for action, _ in grants} == needed | EXTRA_ACTIONS
    arns = {f"arn:aws:s3:::{b}" for b in example.storage.s3.buckets.values()}
    for action, resource in grants:
        allowed = {_resource(action, a) for a in arns}
        assert resource in allowed, (action, resource)
    for statement in _statements(policy):
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}


def test_policy_is_a_document_iam_accepts(policy: dict[str, Any]) -> None:
    from moto import mock_aws

    assert policy["Version"] == "2012-10-17"
    with mock_aws():
        import boto3

        iam = boto3.client(
            "iam",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        iam.create_policy(PolicyName="archiverd", PolicyDocument=POLICY.read_text())


# -- the lifecycle rule ---------------------------------------------------


def test_lifecycle_is_accepted_by_s3_and_round_trips(
    lifecycle: dict[str, Any],
) -> None:
    """botocore validates the shape; moto's S3 stores it; it reads back the
    same, aborting incomplete multipart uploads after a day."""
    from moto import mock_aws

    with mock_aws():
        import boto3

        for region in ("us-east-1", "us-west-2"):
            s3 = boto3.client(
                "s3",
                region_name=region,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            bucket = f"archiver-{region}"
            if region == "us-east-1":
                s3.create_bucket(Bucket=bucket)
            else:
                s3.create_bucket(
                    Bucket=bucket,
                    CreateBucketConfiguration={"LocationConstraint": region},
                )
            s3.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration=lifecycle
            )
            rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
            assert sorted(rules, key=lambda r: r["ID"]) == sorted(
                lifecycle["Rules"], key=lambda r: r["ID"]
            )
            aborts = [
                r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
                for r in rules
                if r["Status"] == "Enabled" and "AbortIncompleteMultipartUpload" in r
            ]
            assert aborts == [1]


def test_lifecycle_applies_to_every_object_and_outlasts_the_caches(
    lifecycle: dict[str, Any], example: Config
) -> None:
    """Rules cover the whole bucket (archiverd's keys share no prefix), and an
    archive lives far longer than archiverd remembers it as stored."""
    days = []
    for rule in lifecycle["Rules"]:
        assert rule["Status"] == "Enabled"
        assert rule["Filter"] in ({}, {"Prefix": ""}), rule["ID"]
        if "Expiration" in rule:
            days.append(rule["Expiration"]["Days"])
    assert days == [30]
    assert example.storage.exists_cache_ttl < 86400


# -- the systemd unit -----------------------------------------------------


def test_unit_runs_the_archiverd_plugin_in_the_foreground() -> None:
    unit = _unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/bin/twistd")
    plugin = argv.index("archiverd")
    assert "-n" in argv[:plugin] and "--pidfile=" in argv[:plugin]
    options = argv[plugin + 1 :]
    assert options[options.index("--config") + 1] == "/etc/archiverd/archiverd.toml"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_gives_shutdown_grace_time_before_sigkill(example: Config) -> None:
    service = _unit()["Service"]
    assert service["KillSignal"] == "SIGTERM"
    stop = _seconds(service["TimeoutStopSec"])
    grace = max(Config().shutdown_grace, example.shutdown_grace)
    assert grace < stop <= grace + 30


def test_unit_is_hardened() -> None:
    service = _unit()["Service"]
    assert service["User"] not in ("", "root", "0")
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    families = set(service["RestrictAddressFamilies"].split())
    assert families <= {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert {"AF_INET", "AF_INET6"} <= families
    assert int(service["LimitNOFILE"]) >= 16384
    # The s3 backend writes nothing: no writable path is opened up.
    assert "ReadWritePaths" not in service


def _systemd_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's twistd, which exists
    (systemd-analyze refuses a command it cannot find)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    twistd = Path(sys.executable).parent / "twistd"
    if not twistd.exists():
        pytest.skip(f"no twistd beside {sys.executable}")
    copy = tmp_path / UNIT.name
    text = UNIT.read_text()
    assert "/opt/archiverd/venv/bin/twistd " in text
    copy.write_text(text.replace("/opt/archiverd/venv/bin/twistd", str(twistd)))
    return copy


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """No errors, and no warnings about the unit (an unknown key is only a
    warning, with exit status 0)."""
    copy = _systemd_copy(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert copy.name not in output, output


def test_systemd_rates_the_units_exposure_low(tmp_path: Path) -> None:
    copy = _systemd_copy(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=25", copy],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in result.stderr or "--threshold" in result.stderr:
        pytest.skip("this systemd-analyze cannot review a unit file offline")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
