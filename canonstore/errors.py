"""Error types. Every message names the file, variable and step it is about."""


class CanonstoreError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class RecipeError(CanonstoreError, ValueError):
    """The recipe is malformed, names a missing file or asks for an impossible split."""


class SourceError(CanonstoreError, ValueError):
    """A raw input file cannot be used as it is (grid, time axis, NaN, units, ...)."""


class StoreError(CanonstoreError):
    """A store is missing, not a canonstore store, or fails verification."""


class ConfigError(CanonstoreError, ValueError):
    """A training config is malformed or asks for something the store cannot give."""


class RunError(CanonstoreError):
    """A training run's folder or checkpoint is missing, unreadable or belongs to another run."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of a library's error, at most `limit` characters (obstore's run to ~40 lines of debug
    detail, HDF5's to a stack; the first says what happened), else the error's type. canonstore's own errors
    are one line already, whole: their advice comes last, after paths and URLs of any length."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0] if isinstance(exc, CanonstoreError) else text.splitlines()[0][:limit]
