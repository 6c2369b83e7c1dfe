"""Writing a file so that a crash never leaves half of it: write beside it, then rename."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(partial)` fills a hidden partial file beside `path` (`.NAME.partial`), which then
    replaces `path` in one rename: a crash mid-write leaves the earlier file, never a truncated
    one. Returns `path`."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    os.replace(partial, path)
    return path
