"""Download progress on stderr: an updating line on a terminal, else a few lines.

A CI log gets a line per tenth rather than a screenful of carriage returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from archiverd.client.http import PROG

if TYPE_CHECKING:  # (fetch imports this module; Env is only a type here)
    from archiverd.client.fetch import Env

MIB = 1024 * 1024
#: Seconds between redraws of the terminal line.
REDRAW = 0.2


class Progress:
    """One updating line on a terminal; else a quiet line every tenth."""

    def __init__(self, env: Env, total: int | None) -> None:
        self.env = env
        self.total = total
        tty = env.isatty
        if tty is None:
            tty = bool(getattr(env.stderr, "isatty", lambda: False)())
        self.tty = tty
        self.started = env.clock()
        self._shown_at = self.started
        self._tenth = 0

    def _describe(self, done: int) -> str:
        elapsed = max(self.env.clock() - self.started, 1e-6)
        rate = done / elapsed
        text = size_text(done)
        if self.total:
            text += f" / {size_text(self.total)} ({100 * done // self.total}%)"
        text += f", {rate / MIB:.1f} MiB/s"
        if self.total and rate > 0 and done < self.total:
            eta = int((self.total - done) / rate)
            text += f", ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
        return text

    def update(self, done: int) -> None:
        """``done`` bytes are in: redraw, or say so at each new tenth."""
        if self.tty:
            now = self.env.clock()
            if now - self._shown_at >= REDRAW:
                self._shown_at = now
                self.env.stderr.write(f"\r{PROG}: {self._describe(done)}\x1b[K")
                self.env.stderr.flush()
        elif self.total:
            tenth = 10 * done // self.total
            if tenth > self._tenth and tenth < 10:
                self._tenth = tenth
                self.env.say(f"downloaded {self._describe(done)}")

    def finish(self, done: int) -> None:
        """The download is over: the last line, left on the screen."""
        if self.tty:
            self.env.stderr.write(f"\r{PROG}: {self._describe(done)}\x1b[K\n")
            self.env.stderr.flush()
        else:
            self.env.say(f"downloaded {self._describe(done)}")


def size_text(nbytes: int) -> str:
    """Bytes for people: ``512 B``, ``3.5 KiB``, ``12.0 MiB``, ``1.2 GiB``."""
    if nbytes < 1024:
        return f"{nbytes} B"
    if nbytes < MIB:
        return f"{nbytes / 1024:.1f} KiB"
    if nbytes < 1024 * MIB:
        return f"{nbytes / MIB:.1f} MiB"
    return f"{nbytes / (1024 * MIB):.1f} GiB"
