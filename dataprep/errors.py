"""Exceptions raised by the library. Only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class DataprepError(Exception):
    """Base class: a problem the user can fix (bad config, bad input, missing file)."""


class ConfigError(DataprepError):
    """The YAML config or a ``--set`` override is unusable."""


class InputError(DataprepError):
    """An input file is missing or unreadable as a whole (not a single bad record)."""


class StrictModeError(DataprepError):
    """Raised on the first rejected record when a reader runs with ``strict``."""


class AccountingError(DataprepError):
    """The record accounting identity does not hold: always a bug in a stage, never the data."""


class ExpectationError(DataprepError):
    """A critical data-quality expectation failed on the final splits."""


class SplitSchemaError(DataprepError):
    """The lines of one output split do not share one Arrow schema (a field changes type)."""
