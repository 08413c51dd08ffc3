"""Typed errors. Library code raises these with a message meant for a user; only the CLI turns them into
one line on stderr and an exit code."""


class AvctlError(Exception):
    """Something failed; the message says what and what to do. CLI exit code 1."""

    exit_code = 1


class BadInput(AvctlError):
    """The user's input (a file, a flag value, a dataset) is unusable. CLI exit code 1 (nothing was done)."""


class BadUsage(AvctlError):
    """Flags that contradict each other or are out of range. CLI exit code 2."""

    exit_code = 2


class MissingWeights(AvctlError):
    """Model weights are not on disk and cannot be fetched. The message names what to download and where."""
