"""What a sweep keeps in its storage path besides Ray's files: a lock held while a driver runs it (one sweep per
name at a time), and the resolved sweep file it started with, which ``--resume`` compares with the file it is given.

The lock is ``<storage>/.<name>.lock``, created atomically (``O_EXCL``) on a local or shared file system. A lock
left by a driver that died on this machine (its process is gone) is taken over. On object storage (``s3://``)
there is no atomic create: the lock is checked, then written, which keeps two launches a few seconds apart out
of each other's way, not two started in the same instant.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pyarrow import fs

from diffusion_core.config import MAY_CHANGE, ConfigError, changed_keys
from diffusion_core.yaml_input import parse_yaml

SWEEP_FILE = "diffusion_sweep.yaml"
SAFE_ON_RESUME = MAY_CHANGE


class SweepLockedError(RuntimeError):
    """Another driver runs this sweep; the message names it."""


def _filesystem(path: str) -> tuple[fs.FileSystem, str]:
    return fs.FileSystem.from_uri(path) if "://" in path else (fs.LocalFileSystem(), path)


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _holder_alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine: cannot tell, so it holds
    pid = int(holder.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _start_ticks(pid) == holder.get("start", "")


def _describe(holder: dict[str, Any], path: str) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} since {since} ({path})"


def _try_create(path: str, record: bytes) -> bool:
    """Create ``path`` holding ``record``; False when it exists."""
    filesystem, where = _filesystem(path)
    if isinstance(filesystem, fs.LocalFileSystem):
        try:
            fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(record)
        return True
    if filesystem.get_file_info(where).type != fs.FileType.NotFound:
        return False
    with filesystem.open_output_stream(where) as handle:
        handle.write(record)
    return True


def _read(path: str) -> bytes | None:
    filesystem, where = _filesystem(path)
    try:
        with filesystem.open_input_stream(where) as handle:
            return handle.read()
    except (FileNotFoundError, OSError):
        return None


def _delete(path: str) -> None:
    filesystem, where = _filesystem(path)
    try:
        filesystem.delete_file(where)
    except (FileNotFoundError, OSError):
        pass


@contextmanager
def sweep_lock(storage_path: str, name: str) -> Iterator[str]:
    """Hold the sweep's lock while the block runs; another live holder is a SweepLockedError naming it."""
    path = f"{storage_path.rstrip('/')}/.{name}.lock"
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid()), "time": time.time()}
    record = json.dumps(me).encode()
    while not _try_create(path, record):
        text = _read(path)
        holder = json.loads(text) if text else {}
        if holder and _holder_alive(holder):
            raise SweepLockedError(f"sweep {name!r} is running already: {_describe(holder, path)}; wait for it to end, "
                                   "or delete the lock file if that driver is gone")
        _delete(path)  # its driver died on this machine
    try:
        yield path
    finally:
        if _read(path) == record:
            _delete(path)


def save_sweep_file(experiment_path: str, resolved: dict[str, Any]) -> None:
    """Keep the sweep file as resolved at its first launch (credentials redacted) beside Ray's experiment state."""
    filesystem, where = _filesystem(experiment_path)
    filesystem.create_dir(where, recursive=True)
    with filesystem.open_output_stream(f"{where}/{SWEEP_FILE}") as handle:
        handle.write(yaml.safe_dump(resolved, sort_keys=False).encode())


def resume_changes(experiment_path: str, resolved: dict[str, Any], source: str) -> dict[str, tuple[Any, Any]]:
    """The safe changes of a resumed sweep's file (applied, for the parent run to record); any other change is a
    ConfigError listing what differs."""
    text = _read(f"{experiment_path.rstrip('/')}/{SWEEP_FILE}")
    if text is None:
        return {}
    changes = changed_keys(parse_yaml(text.decode()), resolved)
    unsafe = {k: v for k, v in changes.items() if k not in SAFE_ON_RESUME and not k.startswith("final.")}  # final: sweep.finalize's
    if unsafe:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(unsafe.items())[:6])
        more = f" (and {len(unsafe) - 6} more)" if len(unsafe) > 6 else ""
        raise ConfigError(f"{source}: --resume, but the file differs from the sweep's: {listed}{more}; a resumed sweep keeps its "
                          f"space, scheduler and trial count: undo the change, or start a sweep under another name "
                          f"(safe to change: {', '.join(SAFE_ON_RESUME)}, final.*)")
    return changes
