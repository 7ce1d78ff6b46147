"""The project's user-facing errors (torch-free, so every module can raise them).

Every error a user can fix (a bad argument, a bad or missing input file, missing weights) is a
`UserError`: the scripts' guard (`quant_utils.cli.user_errors`) prints it as one `error: ...` line and
exits with code 2. Anything else is a bug and keeps its traceback. Reading a user's file goes through
`reading(path)`, which turns the parse/decode/IO failures of that file into `ConfigError('<file>: <reason>')`.
"""
from __future__ import annotations

import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class UserError(Exception):
    """Base of every error the user can fix; the scripts print it without a traceback (exit code 2)."""


class ConfigError(UserError, ValueError):
    """A model config, argument or input file is invalid; the message says what to fix."""


class WeightsNotFoundError(UserError, RuntimeError):
    """Model, Inception or CLIP weights are not available offline."""


def _parse_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'this file's contents are malformed' (libraries imported only if installed)."""
    import json

    out: list[type[BaseException]] = [UnicodeDecodeError, json.JSONDecodeError, pickle.UnpicklingError]
    try:
        import yaml
        out.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover - yaml is a dependency
        pass
    try:
        import pandas as pd
        out += [pd.errors.ParserError, pd.errors.EmptyDataError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(out)


def _reason(e: BaseException) -> str:
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}; is it a binary file?)"
    if isinstance(e, FileNotFoundError):
        return "does not exist"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(e, PermissionError):
        return "cannot be read (permission denied)"
    detail = " ".join(str(e).split())[:300]
    if "YAMLError" in {c.__name__ for c in type(e).__mro__}:
        kind = "not valid YAML"
    elif type(e).__name__ == "JSONDecodeError":
        kind = "not valid JSON"
    elif type(e).__module__.startswith("pandas"):
        kind = "not a readable CSV table"
    else:
        kind = f"cannot be read ({type(e).__name__})"
    return f"{kind}: {detail}" if detail else kind


@contextmanager
def reading(path: str | Path, what: str = "") -> Iterator[None]:
    """Inside: read and parse the user's file `path`. A missing/unreadable file or malformed contents
    become `ConfigError('<what> <path>: <reason>')`; a `UserError` raised inside passes through unchanged."""
    try:
        yield
    except UserError:
        raise
    except (OSError, *_parse_errors()) as e:
        raise ConfigError(f"{(what + ' ') if what else ''}{path}: {_reason(e)}") from e
