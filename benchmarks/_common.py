"""Shared helpers for geo3d benchmarks: device names, environment info, timing, JSON output.

Usage from another benchmark::

    from _common import device_name, env_info, measure, write_json_atomic  # run as a script
    # or: from benchmarks._common import ...                          # from the repo root
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable

import torch

from geo3d._atomic import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo (falls back to :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    """Human-readable name of ``device`` (CPU model or ``torch.cuda.get_device_name``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def env_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Device, library versions, thread count and UTC time, for the top of a result file."""
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        info["loadavg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    for mod in ("numpy", "scipy", "roma", "pytorch3d"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # not installed (or no __version__)
            info[mod] = None
    return info


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (temp file in the same folder + rename)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")
    return path


def measure(
    fn: Callable[[], Any],
    device: str | torch.device = "cpu",
    min_run_time: float = 0.2,
    rounds: int = 3,
    label: str = "",
) -> dict[str, float]:
    """Time ``fn()`` with :mod:`torch.utils.benchmark` (CUDA-synchronised).

    Runs ``rounds`` blocked autoranges and reports the smallest median (robust on a shared
    machine: interference only ever adds time) and every round's median, in seconds.
    """
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, label=label)
    medians = []
    for _ in range(rounds):
        m = timer.blocked_autorange(min_run_time=min_run_time)
        medians.append(float(m.median))
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    return {"time_s": min(medians), "round_medians_s": medians}


def measure_interleaved(
    fns: dict[str, Callable[[], Any]],
    device: str | torch.device = "cpu",
    min_run_time: float = 0.2,
    rounds: int | dict[str, int] = 3,
    num_threads: int = 1,
) -> dict[str, dict[str, Any]]:
    """Time several callables in interleaved rounds (A B C A B C ...).

    On a shared machine, load changes over time; interleaving exposes every candidate to
    the same conditions. Per callable: the smallest per-round median and all medians (s).
    ``rounds`` may be a dict giving some callables fewer rounds (e.g. a slow reference).
    ``num_threads``: torch's CPU threads while timing (torch.utils.benchmark's default, 1,
    unless given).
    """
    from torch.utils.benchmark import Timer

    timers = {
        k: Timer(stmt="fn()", globals={"fn": f}, label=k, num_threads=num_threads)
        for k, f in fns.items()
    }
    nr = {k: rounds.get(k, 1) if isinstance(rounds, dict) else rounds for k in fns}
    med: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(nr.values(), default=0)):
        for k, t in timers.items():
            if r < nr[k]:
                m = t.blocked_autorange(min_run_time=min_run_time)
                med[k].append(float(m.median))
                if torch.device(device).type == "cuda":
                    torch.cuda.synchronize()
    return {k: {"time_s": min(v), "round_medians_s": v} for k, v in med.items()}


def arteq_data_parser(doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of the ArtEq experiment-data scripts: ``--src`` (a generated
    demo data folder, or a root holding one) and ``--dst`` (the new data root)."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="runs/arteq_bench/data",
                    help="a generated arteq_* data folder of the demo config, or a data root "
                         "holding exactly one")
    ap.add_argument("--dst", required=True, help="data root of the new folder")
    return ap


def arteq_data_folder(src: str | os.PathLike) -> Path:
    """A generated ``arteq_*`` data folder: ``src`` itself, or the one such folder under a
    data root; exits with a message naming ``--src`` otherwise."""
    import sys

    src = Path(src)
    if (src / "train.pt").is_file():
        return src
    caches = [p for p in src.glob("arteq_*") if (p / "train.pt").is_file()]
    if len(caches) != 1:
        sys.exit(f"--src: expected a generated arteq_* folder or a root with one, "
                 f"found {len(caches)}; pass the folder")
    return caches[0]


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file renamed into place: a crash leaves the old
    file (or none), never a truncated one."""
    from geo3d._atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path
