"""Gramine's path normalizer (spec §1.10): the form in which a host path is bound into a file."""

from __future__ import annotations

import os

__all__ = ["normalize_path"]


def normalize_path(p: str | os.PathLike[str]) -> str:
    """Normalize ``p`` exactly as Gramine does before comparing it with a file's bound path.

    Split on ``/``; drop empty and ``.`` components; ``..`` removes the previous name, is kept
    literally in a relative path with nothing left to remove, and is dropped at the root of an
    absolute path; rejoin with single ``/``; keep a leading ``/`` iff ``p`` is absolute; never a
    trailing ``/``. ``./rel//enc`` → ``rel/enc``, ``/a/./b/../c`` → ``/a/c``, ``../x`` → ``../x``.
    A relative path that normalizes to nothing (``.``, ``a/..``) gives ``""``; ``/`` gives ``/``.
    """
    text = os.fspath(p)
    absolute = text.startswith("/")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append("..")
            continue  # absolute: ".." at the root stays at the root
        parts.append(part)
    joined = "/".join(parts)
    return "/" + joined if absolute else joined
