"""Writes that cannot tear: every file goes to a temporary name in the same folder, then is renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


def check_folder(path: str | Path, flag: str) -> None:
    """Before anything starts or is written: `path` (given as `flag`) is a folder this process can make or
    write in. Otherwise one line naming the flag, instead of a traceback once results arrive."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a file, not a folder")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    try:  # a folder made and removed again where the real one will go (access() says yes to root anywhere)
        os.rmdir(tempfile.mkdtemp(prefix=".vitsearch-check-", dir=existing))
    except OSError as exc:
        raise UserError(f"{flag} {str(path)!r}: cannot make a folder in {str(existing)!r} "
                        f"({exc.strerror or exc})") from None


MAX_NAME = 200  # bytes of a folder name the user gives: a file system takes 255, and suffixes (the time) are added


def check_name(name: str | None) -> None:
    """`--name` is one folder inside `--out`: `a/b` made nested folders and `../x` wrote outside `--out`; one
    longer than the file system takes was a traceback after the data had loaded."""
    if name is not None and (not name.strip() or name in (".", "..") or "/" in name or os.sep in name):
        raise UserError(f"--name {name!r} must be a folder name inside --out (no '/', not '.' or '..')")
    if name is not None and len(name.encode()) > MAX_NAME:
        raise UserError(f"--name {name[:20]}... is {len(name.encode())} bytes long, but must be at most {MAX_NAME}")


def free_folder(base: Path) -> Path:
    """`base`, or the first of `base`-2, -3, ... that does not exist or is empty: a default run or
    experiment name holds the time to the second, which runs launched together (a script's loop) share."""
    for k in range(1, 10_000):
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return path
    raise UserError(f"no free folder name next to {str(base)!r}; give --name")


def new_folders(folder: Path) -> list[Path]:
    """The folders that writing a file in `folder` will make (it and the parents that do not exist yet)."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def take_back(folder: Path, names: tuple[str, ...], made: list[Path]) -> None:
    """Undo a new run that stopped before it trained anything: remove its files `names` in `folder`, then
    the folders it made (`new_folders`), each only while empty."""
    for name in names:
        (folder / name).unlink(missing_ok=True)
    for made_folder in made:
        try:
            made_folder.rmdir()
        except OSError:
            break


def claim_folder(folder: Path, base: Path | None, write: Callable[[Path], None], taken: str) -> Path:
    """A new run's or search's folder, claimed by `write(folder)`, which writes its first file exclusively:
    of processes started together, the first wins. Where another took it meanwhile: with `base` (a default
    name) the first free one of `base`, `base`-2, ...; without (a name the user gave), UserError `taken`."""
    while True:
        try:
            write(folder)
            return folder
        except FileExistsError:
            if base is None:
                raise UserError(taken) from None
            folder = free_folder(base)


_HELD: list[int] = []  # lock files held until the process ends


def lock_experiment(exp_dir: Path, lock: str = ".lock", busy: str = "") -> None:
    """Hold an exclusive lock on `exp_dir`/`lock` until this process ends (the OS drops it then, after
    `kill -9` too): a second search in the same experiment (a --resume while it still runs) is refused,
    or with `busy` (a message in which {pid} stands for its pid), whatever else holds that lock."""
    try:
        import fcntl
    except ImportError:  # not on Windows
        return
    try:
        fd = os.open(exp_dir / lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a folder it cannot write: the search's own first write says so in one line
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(busy.replace("{pid}", pid) if busy else f"experiment {str(exp_dir)!r} is in use by a search "
                        f"that is still running (pid {pid}); wait for it to end, or stop it, then --resume") from None
    except OSError:  # a filesystem without locks (some network mounts): the search goes on unlocked
        os.close(fd)
        return
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD.append(fd)


def search_running(exp_dir: Path) -> str | None:
    """The pid (as text, "?" when unknown) of the search that holds `exp_dir`'s lock, or None when no
    search holds it (or there is no lock to test)."""
    try:
        import fcntl

        fd = os.open(exp_dir / ".lock", os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # free (released when fd closes)
    except BlockingIOError:
        return os.read(fd, 32).decode(errors="replace").strip() or "?"
    except OSError:
        return None
    finally:
        os.close(fd)


def _atomic(path: Path, write, exclusive: bool = False) -> None:
    """`exclusive`: only if `path` does not exist yet (a hard link fails where a rename would replace), else
    FileExistsError: of two processes that claim the same file, one wins."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if exclusive:
            try:
                os.link(tmp, path)
                tmp.unlink()
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: claim the name by an exclusive create
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as exc:  # also Ctrl-C or SIGTERM mid-write: no half-written temporary file is left
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only file system: there is none (removing it raised, hiding the error)
            pass
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise UserError(f"cannot write {str(path)!r}: {exc.strerror or exc}; earlier files are kept") from None
        raise


def write_parquet(df, path: str | Path, exclusive: bool = False) -> None:
    """Write a pandas DataFrame as Parquet (pyarrow), atomically."""
    _atomic(Path(path), lambda tmp: df.to_parquet(tmp, index=False, engine="pyarrow"), exclusive)


def write_yaml(data: Any, path: str | Path, header: str = "", exclusive: bool = False) -> None:
    text = header + yaml.safe_dump(data, sort_keys=False)
    _atomic(Path(path), lambda tmp: tmp.write_text(text), exclusive)


def write_bytes(data: bytes, path: str | Path, exclusive: bool = False) -> None:
    _atomic(Path(path), lambda tmp: tmp.write_bytes(data), exclusive)


def folders_in(folder: Path, files: tuple[str, str] = ("space.yaml", "run.json"),
                   kind: str = "experiment folder") -> str:
    """Where `folder` holds experiment folders (the results folder given for one of its experiments), or with
    `files` ("config.yaml", "checkpoint.pt") train run folders: the phrase that names the latest of them for an
    error line, else ''."""
    from .cli import count

    try:
        found = [p for p in folder.iterdir() if all((p / name).is_file() for name in files)]
    except OSError:
        return ""
    if not found:
        return ""
    latest = max(found, key=lambda p: (p / files[-1]).stat().st_mtime)
    if len(found) == 1:
        return f"; it holds one {kind}, {str(latest)!r}: give that"
    return f"; it holds {count(len(found), kind)}: give one of them, such as the latest, {str(latest)!r}"
