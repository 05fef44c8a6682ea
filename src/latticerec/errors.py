"""Exceptions raised for bad input, each carrying a message that names the file, line or field.

The command line prints every :class:`LatticeRecError` as ``latticerec: error: ...`` and exits with
status 2; nothing a user can cause ends in a traceback.
"""


class LatticeRecError(Exception):
    """Base class of every error latticerec reports to a user."""


class DataError(LatticeRecError, ValueError):
    """A data file or dataset is malformed or inconsistent."""


class ConfigError(LatticeRecError, ValueError):
    """An unknown or ill-typed configuration key, model name or option."""


class OutputError(LatticeRecError, OSError):
    """A file or folder cannot be written (read-only, full disk, no permission); names the path."""


class RunError(LatticeRecError):
    """A run folder cannot be used as asked: it holds another run, is locked by a live process,
    or does not match the run being resumed."""


class TrainingError(LatticeRecError, FloatingPointError):
    """Training diverged (a non-finite loss)."""
