"""Writes that cannot tear: every file goes to a temporary name in the same folder, then is renamed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {str(path)!r}: {exc.strerror or exc}; earlier files are kept") from None


def write_parquet(df, path: str | Path) -> None:
    """Write a pandas DataFrame as Parquet (pyarrow), atomically."""
    _atomic(Path(path), lambda tmp: df.to_parquet(tmp, index=False, engine="pyarrow"))


def write_yaml(data: Any, path: str | Path, header: str = "") -> None:
    text = header + yaml.safe_dump(data, sort_keys=False)
    _atomic(Path(path), lambda tmp: tmp.write_text(text))


def write_bytes(data: bytes, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: tmp.write_bytes(data))
