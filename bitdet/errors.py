"""User errors: problems the person running bitdet fixes by changing a config key or value, a
flag, a file or a path. Each message names what to change. The tools print a user error as one
line and exit with status 2; any other exception is a bug and keeps its traceback.

Each class also derives from the built-in exception that callers of the library catch
(``ValueError``, ``KeyError``, ``FloatingPointError``, ``ImportError``).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "MissingPackageError",
    "NonFiniteError",
    "UnknownNameError",
    "UserError",
]


class UserError(Exception):
    """Base of every error the user fixes; the message names the key, flag, file or value."""


class ConfigError(UserError, ValueError):
    """A config key or value, a command-line flag, or a setting passed to the library, that
    bitdet cannot use."""


class UnknownNameError(UserError, KeyError):
    """A name bitdet does not know (a model, dataset or task); the message lists the known ones."""

    def __str__(self) -> str:  # the message, without the quotes KeyError adds
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class DataError(UserError, ValueError):
    """A file whose contents cannot be used (images, labels, shards, annotations, results)."""


class NonFiniteError(UserError, FloatingPointError):
    """Training produced NaN or inf (a loss, or weights about to be saved): the learning rate or
    the data."""


class MissingPackageError(UserError, ImportError):
    """An optional package that a feature needs is not installed; the message names the install
    command."""
