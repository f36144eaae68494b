"""The one error hierarchy of logitsearch; every layer raises these (or subclasses of them)."""

from __future__ import annotations


class LogitsearchError(Exception):
    """Root of every error raised on purpose."""


class InvalidInput(LogitsearchError, ValueError):
    """Input that cannot be used: names the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason

    def __reduce__(self) -> tuple[type[InvalidInput], tuple[str, str]]:
        # pickle would call cls(message): a shard actor's error must reach the coordinator whole (issue 13)
        return type(self), (self.field, self.reason)


class LimitExceeded(InvalidInput):
    """A batch, body, k or sample larger than the configured limit."""


class NotFound(LogitsearchError, LookupError):
    """A collection, point or index that does not exist."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else "not found"


class Conflict(LogitsearchError):
    """Exists already with a different configuration, or the state forbids the change."""


class StorageError(LogitsearchError):
    """Damaged, foreign or unreadable state on disk, or a disk that refuses writes."""
