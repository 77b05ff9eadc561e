"""archiverd-fetch: get one archive from archiverd, check it, save or extract it.

::

    archiverd-fetch --server URL SOURCE REPO REV [--subdir S] [--suffix tar.gz]
                    [--region R] (--dest DIR | -o FILE)

    python -m archiverd.client.cli ...   (the same, without the console script)

The successor of the old service's ``archiver_client``: the
:class:`~archiverd.client.fetch.Client` gets the archive and checks its
sha256, then this renames it into place (``-o``) or extracts it (``--dest``)
the way the old client did: only the subdir, with the archive's top folder and
the subdir stripped, refusing any member that would land outside DIR.

A plain synchronous program on the standard library: it runs where archiverd
does not (CI workers) and needs nothing but Python.

Exit codes: 0 done, 1 usage (bad arguments, or a 4xx from archiverd),
3 infrastructure (archiverd unreachable, 5xx after retries, the task failed,
a bad checksum, an unsafe archive, time out).
"""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from archiverd.client.extract import UnsafeArchive, extract
from archiverd.client.fetch import Client, Env, FetchError, UsageError
from archiverd.client.http import PROG
from archiverd.wire import SUFFIXES

EXIT_OK, EXIT_USAGE, EXIT_INFRA = 0, 1, 3
#: What Ctrl-C exits with, as a shell reports a SIGINT.
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Usage errors exit 1, as the old client's did (argparse says 2)."""
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    """The command line's options (see the module's docstring)."""
    p = _Parser(
        prog=PROG,
        description="Fetch a repository archive through archiverd, check its "
        "sha256, and save it (-o) or extract it (--dest).",
        epilog="Exit codes: 0 done, 1 usage, 3 infrastructure error.",
    )
    p.add_argument("--server", required=True, help="archiverd's base URL")
    p.add_argument("source", metavar="SOURCE", help="e.g. hgmo")
    p.add_argument("repo", metavar="REPO", help="e.g. mozilla-central")
    p.add_argument("rev", metavar="REV", help="changeset id, tag, bookmark, branch")
    p.add_argument("--subdir", default="", help="only this folder of the repo")
    p.add_argument("--suffix", default="tar.gz", choices=SUFFIXES)
    p.add_argument("--region", default="", help="preferred storage region")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--dest", metavar="DIR", help="extract the archive here")
    out.add_argument("-o", "--output", metavar="FILE", help="save the archive here")
    p.add_argument(
        "--timeout", type=float, default=3600.0, help="give up after this many s"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=5,
        help="attempts after a connection error or 5xx, in a row, and new tasks "
        "after one failed for a reason that may pass (default 5)",
    )
    return p


def main(argv: list[str] | None = None, env: Env | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = parser().parse_args(argv)
    env = env or Env()
    try:
        return _run(args, env)
    except UsageError as e:
        env.say(f"error: {e}")
        return EXIT_USAGE
    except (FetchError, UnsafeArchive) as e:
        env.say(str(e))
        return EXIT_INFRA
    except OSError as e:
        env.say(f"{e.filename or 'error'}: {e.strerror or e}")
        return EXIT_INFRA
    except KeyboardInterrupt:
        env.say("interrupted")
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, env: Env) -> int:
    if urlsplit(args.server).scheme not in ("http", "https"):
        raise UsageError(f"--server must be an http(s) URL, not {args.server!r}")
    if args.timeout <= 0 or args.retries < 0:
        raise UsageError("--timeout must be positive and --retries at least 0")
    client = Client(
        args.server,
        args.source,
        args.repo,
        args.rev,
        subdir=args.subdir,
        suffix=args.suffix,
        region=args.region,
        timeout=args.timeout,
        retries=args.retries,
        env=env,
    )
    if args.output:
        return _save(client, args.output, env)
    return _extract(client, args, env)


def _save(client: Client, output: str, env: Env) -> int:
    """``-o FILE``: the checked archive, renamed into place."""
    target = Path(output)
    if target.is_dir():
        raise UsageError(f"-o {output}: is a folder (use --dest to extract)")
    if not target.parent.is_dir():
        raise UsageError(f"-o {output}: no such folder {target.parent}")
    partial = client.fetch(target.parent)
    try:
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    env.say(f"saved {target}")
    return EXIT_OK


def _extract(client: Client, args: argparse.Namespace, env: Env) -> int:
    """``--dest DIR``: the subdir of the checked archive, extracted into DIR."""
    dest = Path(args.dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--dest {args.dest}: not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    partial = client.fetch(dest)
    try:
        count = extract(partial, dest, args.suffix, _subdir_in_archive(args))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise FetchError(f"cannot read the archive: {e}") from e
    finally:
        partial.unlink(missing_ok=True)
    env.say(f"extracted {count} entries into {dest}")
    return EXIT_OK


def _subdir_in_archive(args: argparse.Namespace) -> str:
    """The folder the archive holds the subdir under, below its top folder."""
    return posixpath.normpath(args.subdir).strip("/") if args.subdir else ""


if __name__ == "__main__":
    sys.exit(main())
