"""The root of every teeserve exception.

Each sub-package draws its own exception tree under :class:`TeeserveError` (see the module docstring
of its ``_errors.py``), so the CLI and the server can catch everything of ours in one place and treat
anything else as a bug. Messages are for the local operator: they name the file or field at fault and
never contain secret bytes.
"""

from __future__ import annotations

__all__ = ["TeeserveError", "UsageError"]


class TeeserveError(Exception):
    """Base class of all teeserve errors. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class UsageError(TeeserveError):
    """The command line or a configuration file asked for something impossible."""

    exit_code = 2
