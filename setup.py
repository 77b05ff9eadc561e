import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "archiverd" / "__init__.py").read_text()
).group(1)


def _git(*args):
    try:
        out = subprocess.run(
            ["git", *args], cwd=HERE, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout.strip()


def _public(url):
    """A remote's URL without any credentials in it."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    return urlunsplit(parts)


class BuildWithVersion(build_py):
    """Writes archiverd/version.json, which /__version__ serves (Dockerflow)."""

    def run(self):
        super().run()
        info = {
            "source": _public(_git("remote", "get-url", "origin")),
            "version": VERSION,
            "commit": _git("rev-parse", "HEAD") or "unknown",
            "build": "",
        }
        target = Path(self.build_lib) / "archiverd" / "version.json"
        target.write_text(json.dumps(info) + "\n")


setup(
    name="archiverd",
    version=VERSION,
    description="An archive cache in front of VCS hosts: streams repository "
    "archives into S3 or local storage and redirects clients to signed URLs.",
    python_requires=">=3.11",
    packages=[*find_packages(include=["archiverd", "archiverd.*"]), "twisted.plugins"],
    package_data={"twisted": ["plugins/archiverd_plugin.py"]},
    install_requires=[
        "twisted>=24.7",
        "treq>=24.9",
        "klein>=24.8",
        "botocore>=1.36",
        "prometheus-client>=0.20",
        "redis>=8.1",
    ],
    entry_points={
        "console_scripts": [
            "archiverd-fetch = archiverd.client.cli:main",
            "archiverd = archiverd.check:main",
        ]
    },
    cmdclass={"build_py": BuildWithVersion},
)
