"""The run that assembled BENCHMARKS.md (machine, mode, load, versions), kept as JSON beside the results so
that the file can be rendered again from the JSON alone."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

FILE_NAME = "_environment.json"
PACKAGES = ("torch", "diffusers", "pytorch-fid", "ray", "optuna", "mlflow")


@dataclass(frozen=True)
class Environment:
    date: str
    device: str  # GPU name, or the CPU model
    cuda: bool
    device_arg: str  # ``run_all --device`` as given
    quick: bool
    threads: str  # OMP_NUM_THREADS of every benchmark process
    cores: int
    load_start: str
    load_end: str
    seconds: float  # wall time of the run
    versions: dict[str, str]
    measured: list[str]  # benchmarks this run measured; the others were taken from their JSON

    @property
    def invocation(self) -> str:
        return (f"OMP_NUM_THREADS={self.threads} python -m bench.run_all" + (" --quick" if self.quick else "")
                + (f" --device {self.device_arg}" if self.device_arg != "auto" else ""))

    def write(self, folder: Path) -> None:
        (folder / FILE_NAME).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> Environment:
        return cls(**json.loads((folder / FILE_NAME).read_text()))


def now() -> str:
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
