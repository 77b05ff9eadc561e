"""The layout's rules (docs/architecture.md), checked on the source: what each
part may import, and who may touch the global reactor."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "archiverd"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts as ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules(*parts: str) -> list[Path]:
    found: list[Path] = []
    for part in parts:
        target = PACKAGE / part
        found += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return found


def _offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE) else path}"
        f" imports {name}"
        for path in paths
        for name in sorted(_imports(path))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


RULES = [
    # The HTTP layer translates; the domain and the backends are elsewhere.
    (
        ("api",),
        (
            "archiverd.storage.files",
            "archiverd.storage.s3",
            "archiverd.tasks.redis_store",
            "archiverd.tasks.fleet",
            "redis",
            "botocore",
        ),
    ),
    # The domain decides without HTTP.
    (
        ("archives.py", "tasks", "transfer", "storage"),
        ("archiverd.api", "klein", "werkzeug", "twisted.web.server"),
    ),
    # Tasks know no backend; storage knows no task.
    (("tasks",), ("archiverd.storage.files", "archiverd.storage.s3", "botocore")),
    (("storage",), ("archiverd.tasks", "archiverd.transfer", "archiverd.archives")),
    # The client runs where only the standard library is.
    (("client", "wire.py", "util/backoff.py"), ("twisted", "klein", "treq")),
]


@pytest.mark.parametrize(("parts", "forbidden"), RULES)
def test_each_part_imports_only_what_it_may(
    parts: tuple[str, ...], forbidden: tuple[str, ...]
) -> None:
    assert _offending(_modules(*parts), forbidden) == []


def test_only_tap_touches_the_global_reactor() -> None:
    touching = [
        str(path.relative_to(PACKAGE.parent))
        for path in _modules(".")
        if "twisted.internet.reactor" in _imports(path)
    ]
    assert touching == ["archiverd/tap.py"]


def test_the_rule_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The checks above can fail: a module that imports a backend is named."""
    module = tmp_path / "bad.py"
    module.write_text("from archiverd.storage.files import FileStorage\n")
    assert _offending([module], ("archiverd.storage.files",)) != []
    module.write_text("def f():\n    from twisted.internet import reactor\n")
    assert "twisted.internet.reactor" in _imports(module)


def test_the_web_layer_loads_no_backend_and_no_redis_client() -> None:
    """Not even indirectly: importing the API leaves them unloaded."""
    code = (
        "import sys, archiverd.api.web, archiverd.api.site; "
        "bad = [m for m in ('redis', 'botocore', 'archiverd.storage.files', "
        "'archiverd.storage.s3', 'archiverd.tasks.redis_store') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PACKAGE.parent,
        env={"PYTHONPATH": str(PACKAGE.parent)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_no_two_test_modules_share_a_name() -> None:
    """The test folders are not packages: pytest imports each module by its
    basename, so two of one name make `make test` fail to collect."""
    tests = Path(__file__).resolve().parents[1]
    names = [p.name for p in tests.rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
