"""Exceptions the library raises for bad input.

Every user-facing failure is a :class:`RobustTransferError`; its message is one line that
says what is wrong and what to do. The CLI prints it and exits with status 2.
"""


class RobustTransferError(Exception):
    """Base class for errors caused by input the user can fix."""


class ConfigError(RobustTransferError, ValueError):
    """An impossible or malformed value: negative eps, unknown key, n too large."""


class UnknownNameError(ConfigError, KeyError):
    """A name that is not in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DatasetError(RobustTransferError):
    """Dataset files are missing or unreadable."""


class CheckpointError(RobustTransferError):
    """A checkpoint is missing, corrupt, truncated or does not fit the model."""


class OutputExistsError(RobustTransferError):
    """An output path already exists and overwriting was not asked for."""


class NonFiniteError(RobustTransferError):
    """Training produced NaN or infinite losses: the run diverged and its numbers mean nothing."""
