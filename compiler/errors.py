"""Errors that tvmforge reports to a user as one line.

Every failure a user can cause or meet is one of these two classes; the CLI prints
``error: <message>`` and exits with ``exit_code`` (click's convention: 2 for bad usage or bad
input, 1 for a compile failure). Anything else escaping is a bug and is reported as one too.
"""

from __future__ import annotations

import unicodedata


def printable(text: object) -> str:
    """``text`` with control characters escaped (``\\x1b``), for names that come from a model
    or a manifest: an escape sequence in a tensor name must not reach a terminal raw."""
    s = str(text)
    if not any(unicodedata.category(c) == "Cc" for c in s):
        return s
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) == "Cc" else c
        for c in s
    )


_interrupted = False


def note_interrupt() -> None:
    """Record that a Ctrl-C or SIGTERM arrived (a signal handler calls it)."""
    global _interrupted
    _interrupted = True


def interrupted() -> bool:
    """Whether a Ctrl-C or SIGTERM arrived: TVM's FFI hands a ``KeyboardInterrupt`` raised
    inside its C++ code back as a bare ``RuntimeError``, so the exception alone cannot tell."""
    return _interrupted


class TvmforgeError(Exception):
    """Base class: a message meant for the user, and the exit status that goes with it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        """The one line the CLI prints (newlines in quoted tool output are folded)."""
        text = f"{self.message}; {self.hint}" if self.hint else self.message
        folded = " ".join(part.strip() for part in text.splitlines() if part.strip())
        return printable(folded)


class InputError(TvmforgeError):
    """Bad input: a missing or malformed file, a wrong shape, an unknown name (exit 2)."""

    exit_code = 2


class CompileError(TvmforgeError):
    """A valid model that tvmforge could not compile, or a check that failed (exit 1)."""

    exit_code = 1
