"""Lazy package exports (PEP 562) for packages whose sub-modules are costly to import.

``teeserve.attest``, ``teeserve.broker`` and ``teeserve.provision`` load their errors eagerly and every
other public name on first access, so that the attested start of ``teeserve serve`` imports only the
attester's path (not SQLite, pyOpenSSL, dcap-qvl or the policy loader).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], modules: Mapping[str, tuple[str, ...]], submodules: tuple[str, ...] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package whose ``globals()`` is ``namespace``: each name in
    ``modules`` (relative module -> the names it defines) is imported on first access and then kept
    in the package; ``submodules`` are names that are sub-modules of the package themselves."""
    where = {name: module for module, names in modules.items() for name in names}
    package = namespace["__name__"]

    def __getattr__(name: str) -> object:
        if name in submodules:
            return __import__(name, namespace, None, (name,), 1)  # binds the sub-module there too
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        # ``from .module import name``: unlike importlib.import_module, this shows in -X importtime
        value = getattr(__import__(module, namespace, None, (name,), 1), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *namespace["__all__"]})

    return __getattr__, __dir__
