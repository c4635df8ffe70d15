"""What :mod:`teeserve.deploy` raises: a deployment input that cannot give a working enclave.

Every message names the option or file at fault and says what to do::

    TeeserveError
    └── DeployError                 anything from teeserve.deploy
        ├── ManifestInputError      an option or path cannot be put into a manifest (exit 2)
        ├── PythonLayoutError       the target interpreter could not be inspected
        └── BoundPathMismatch       an encrypted file is bound to another host path than its mount's uri
"""

from __future__ import annotations

from .._errors import TeeserveError

__all__ = ["DeployError", "ManifestInputError", "PythonLayoutError", "BoundPathMismatch"]


class DeployError(TeeserveError):
    """Base class of the deployment helpers' errors."""


class ManifestInputError(DeployError):
    """An option or path cannot be put into a Gramine manifest as given."""

    exit_code = 2


class PythonLayoutError(DeployError):
    """The Python interpreter the enclave will run could not be inspected."""


class BoundPathMismatch(DeployError):
    """A protected file carries another path than the one Gramine will compute for it (§1.10)."""
