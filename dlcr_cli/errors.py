"""Errors that end a command with one line and a meaningful exit code (sysexits.h)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_USAGE = 2
EXIT_DATAERR = 65
EXIT_NOINPUT = 66
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what coreutils report when the reader went away
EXIT_INTERRUPTED = 130


class DlcrError(Exception):
    """A failure the user can act on: printed as one line, no traceback (unless DLCR_DEBUG=1)."""

    exit_code = EXIT_ITEMS_FAILED


class UsageError(DlcrError):
    exit_code = EXIT_USAGE


class MalformedInput(DlcrError):
    """Input that exists but cannot be understood (bad JSONL line, unknown layout)."""

    exit_code = EXIT_DATAERR


class InputMissing(DlcrError):
    exit_code = EXIT_NOINPUT


class Unavailable(DlcrError):
    """A model or device that cannot be had (offline, gated, missing, no GPU)."""

    exit_code = EXIT_UNAVAILABLE


class ConfigError(DlcrError):
    exit_code = EXIT_CONFIG


class ItemsFailed(DlcrError):
    """Some items failed (each already logged); the others were done."""

    exit_code = EXIT_ITEMS_FAILED


class ItemError(Exception):
    """One item (image, record) could not be processed; the run goes on without it."""
