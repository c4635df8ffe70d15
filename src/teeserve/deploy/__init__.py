"""Deployment helpers: the Gramine manifest of ``teeserve serve`` and the enclave's key path.

- :func:`render_manifest` / :class:`ManifestSpec` / :func:`inspect_python`: a Gramine manifest template
  (valid TOML; ``gramine-manifest`` fills in only Gramine's own paths) for one model layout, in either
  key path (``gramine-mounts``: Gramine decrypts encrypted mounts; ``in-process``: teeserve decrypts);
- :func:`check_bound_paths`: the encrypted files are bound to the host paths the manifest mounts;
- :func:`obtain_wrap_key` / :func:`install_gramine_key`: what ``teeserve gramine provision`` does at
  enclave start.

The container, Kubernetes and nginx files live in the repository's ``deploy/`` folder (docs/deploy.md).
"""

from __future__ import annotations

from ._bound import BOUND_PATH_RULE, BoundPathCheck, check_bound_paths, sample_files
from ._errors import BoundPathMismatch, DeployError, ManifestInputError, PythonLayoutError
from ._manifest import MODES, PROVISIONERS, ManifestSpec, render_manifest, serve_argv
from ._provision import ProvisionSettings, install_gramine_key, obtain_wrap_key
from ._python import PythonLayout, inspect_python

__all__ = [
    "BOUND_PATH_RULE",
    "MODES",
    "PROVISIONERS",
    "BoundPathCheck",
    "BoundPathMismatch",
    "DeployError",
    "ManifestInputError",
    "ManifestSpec",
    "ProvisionSettings",
    "PythonLayout",
    "PythonLayoutError",
    "check_bound_paths",
    "inspect_python",
    "install_gramine_key",
    "obtain_wrap_key",
    "render_manifest",
    "sample_files",
    "serve_argv",
]
