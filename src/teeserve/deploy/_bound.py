"""Check that encrypted files are bound to the host paths their manifest mounts them from (§1.10).

Gramine accepts a protected file only if the path stored inside it equals the normalized host path it
opens the file by: the mount's ``uri`` (without ``file:``) joined with the file's path under the mount.
A mismatch shows up only inside the enclave as ``EACCES``, so ``teeserve gramine manifest`` checks a
sample before anything is signed. Without the wrap key only the format can be checked (the stored path
is inside the encrypted metadata).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BOUND_PATH_RULE", "BoundPathCheck", "check_bound_paths", "sample_files"]

BOUND_PATH_RULE = (
    "Gramine opens an encrypted file only if the path stored in it equals the normalized host path it "
    "is read from: the mount's uri (here the same as its path) joined with the file's path under the "
    "mount. Encrypt with -o at that path, or give the path with --host-prefix "
    "(teeserve encrypt -w KEY -i plain/ -o OUT/ --host-prefix MODEL_DIR)."
)


@dataclass(frozen=True)
class BoundPathCheck:
    """The verdict on one file: ``ok`` None means "not checked" (no key), with ``detail`` saying why."""

    path: str
    expected: str
    protected: bool
    stored: str | None = None
    ok: bool | None = None
    detail: str = ""


def sample_files(root: str | os.PathLike[str], limit: int = 3) -> Iterator[Path]:
    """Up to ``limit`` regular files under ``root`` (a directory) or ``root`` itself (a file), sorted."""
    base = Path(root)
    if base.is_file():
        yield base
        return
    count = 0
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name
            count += 1
            if count >= limit:
                return


def check_bound_paths(files: list[Path], key: bytes | None) -> list[BoundPathCheck]:
    """Check each file: a protected file at all, and (with ``key``) bound to its normalized path."""
    from .. import pf

    results: list[BoundPathCheck] = []
    for path in files:
        expected = pf.normalize_path(os.fspath(path))
        try:
            protected = pf.is_protected_file(path)
        except (OSError, pf.ProtectedFileError) as exc:
            results.append(BoundPathCheck(os.fspath(path), expected, False, ok=False, detail=f"unreadable: {exc}"))
            continue
        if not protected:
            results.append(BoundPathCheck(os.fspath(path), expected, False, ok=False,
                                          detail="not a Gramine protected file (plaintext on the host)"))
            continue
        if key is None:
            results.append(BoundPathCheck(os.fspath(path), expected, True, ok=None,
                                          detail="protected file; bound path not checked (no --wrap-key)"))
            continue
        try:
            with pf.open_reader(path, key) as reader:
                stored = reader.stored_path
        except pf.ProtectedFileError as exc:
            results.append(BoundPathCheck(os.fspath(path), expected, True, ok=False, detail=str(exc)))
            continue
        ok = stored == expected
        results.append(BoundPathCheck(
            os.fspath(path), expected, True, stored, ok,
            "bound to its host path" if ok else f"bound to {stored!r}, but Gramine will expect {expected!r}",
        ))
    return results
