"""Filling a real filesystem, for the tests of what the agent does when its disk is full."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def fill(directory: Path, *, leave: int = 0) -> Path:
    """Fills the filesystem of `directory` with one file until `leave` bytes are free (or none)."""
    filler = directory / "filler"
    with filler.open("ab") as out:
        chunk = b"\0" * 65536
        while True:
            st = os.statvfs(directory)
            free = st.f_bavail * st.f_frsize - leave
            if free <= 0:
                break
            try:
                out.write(chunk[: min(len(chunk), free)])
                out.flush()
            except OSError:
                break
    return filler
