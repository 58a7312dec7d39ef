"""User-facing errors: one line that names the problem and the fix, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BinbenchError(Exception):
    """An error caused by the user's input; the CLI prints its message on one line and exits with 2."""


class UnknownNameError(BinbenchError, KeyError):
    """A name that is not in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(BinbenchError, ValueError):
    """A configuration value that is missing, unknown or of the wrong type."""


class DataNotFoundError(BinbenchError, FileNotFoundError):
    """A dataset whose files are not where binbench looked."""


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' with the closest candidates, or '' when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


class DataCorruptError(BinbenchError, ValueError):
    """A data file exists but cannot be read: damaged, truncated or not what its name says."""


#: how an error names a type: for a person, not Python's spelling ("float | None" -> "a number or none")
_TYPE_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
               "list": "a list", "dict": "a mapping (key: value)", "tuple": "a list", "None": "none",
               "NoneType": "none"}


def type_words(annotation: str) -> str:
    """'float | None' -> 'a number or none'; 'list[int]' -> 'a list'; unknown names are kept."""
    parts = [p.strip().split("[")[0].split(".")[-1] for p in str(annotation).replace("Optional[", "").split("|")]
    words = list(dict.fromkeys(_TYPE_WORDS.get(p.rstrip("]"), p) for p in parts if p))
    return " or ".join(words)


def example_of(annotation: str) -> object:
    """A value of the first basic type an annotation names ("float | None" -> 0.0): what a hyperparameter whose
    default is None is checked and converted against; None where it names none."""
    for part in str(annotation).split("|"):
        example = {"bool": False, "int": 0, "float": 0.0, "str": ""}.get(part.strip())
        if example is not None:
            return example
    return None
