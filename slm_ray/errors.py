"""User-facing errors.

Anything raised as a ``SlmRayError`` is a mistake the user can fix (a bad config value, a missing
file, an unreachable bucket). Entry points print it as one line and exit with code 2; every other
exception is a bug and keeps its traceback.
"""


class SlmRayError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class ConfigError(SlmRayError):
    """The composed configuration is invalid: names the key, the bad value and what is valid."""


class DataError(SlmRayError):
    """A dataset or corpus file is missing, empty or malformed."""


class StorageError(DataError):
    """A remote file (s3://) could not be fetched or verified."""


class PreflightError(SlmRayError):
    """What was asked cannot run here: a model that cannot be loaded, a device or package that is
    missing, a cluster that does not answer. Found before anything heavy starts; one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class CompareError(SlmRayError):
    """Two runs cannot be compared: a folder that is not a finished run, an unknown trial, runs that
    share no example, or an output file that is not a previous comparison's."""


def describe_error(exc: BaseException) -> str:
    """``Type: message`` in one line. A Ray error's text starts with the remote traceback, so it is the
    cause that is named, by the last line of its text (where its own message is)."""
    cause = getattr(exc, "cause", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
