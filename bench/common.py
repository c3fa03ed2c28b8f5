"""What every long bench shares: records written atomically and resumed, the commit and CPU a
record was made on, and one ``train.py`` run in its own folder.

Benches run ``train.py`` as a subprocess, the way a user does, one torch thread each, several
side by side ("lanes"); a record is appended the moment its run ends, so a stopped bench
continues with what is missing.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TypeVar

ROOT = Path(__file__).resolve().parents[1]
T, R = TypeVar("T"), TypeVar("R")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_metanas.latency import cpu_model  # noqa: E402,F401  (re-exported for the benches)


def git_commit(root: Path = ROOT) -> str:
    """HEAD of ``root``, with ``-dirty`` when tracked files differ from it."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load(path: Path) -> list | dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else []


def save(path: Path, data: list | dict) -> None:
    """Write JSON atomically: a reader (or a killed writer) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def shown(command: list[str], root: Path = ROOT) -> str:
    """A command as a user would type it from the repository root."""
    words = ["python"] + [os.path.relpath(w, root) if w.startswith(str(root)) else w for w in command[1:]]
    return " ".join(words)


@contextlib.contextmanager
def others_paused(enabled: bool = True) -> Iterator[None]:
    """SIGSTOP every other ``train.py``/``eval.py`` process and every other bench of this user
    for the block (they resume with SIGCONT afterwards, their results unchanged: only their
    wall time grows), so what the block times has the cores to itself."""
    pids: list[int] = []
    if enabled:
        found = subprocess.run(["pgrep", "-u", str(os.getuid()), "-f", r"python.*((train|eval)\.py|bench/\w+\.py)"],
                               capture_output=True, text=True)
        pids = [int(p) for p in found.stdout.split() if int(p) not in (os.getpid(), os.getppid())]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        time.sleep(1.0)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def run_in_lanes(jobs: Sequence[T], run: Callable[[T], Optional[R]], record: Callable[[T, R], None], lanes: int) -> None:
    """``run`` every job, ``lanes`` at a time (threads: each job is a subprocess), and
    ``record`` each result the moment it is there, one at a time (so a stopped bench keeps
    every result it had)."""
    lock = threading.Lock()

    def job(item: T) -> None:
        result = run(item)
        if result is not None:
            with lock:
                record(item, result)

    with ThreadPoolExecutor(max(1, lanes)) as pool:
        list(pool.map(job, jobs))


@dataclass
class TrainRun:
    """A finished ``train.py`` run: its test record, the version folder, the wall time."""

    result: dict
    version: Path
    seconds: float

    def val_curve(self) -> list[float]:
        """Validation accuracy at the end of each epoch (``metrics.csv``), in epoch order."""
        path = self.version / "metrics.csv"
        if not path.is_file():
            return []
        by_epoch: dict[int, float] = {}
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("val/acc") and row.get("epoch"):
                    by_epoch[int(float(row["epoch"]))] = float(row["val/acc"])
        return [by_epoch[e] for e in sorted(by_epoch)]


def run_train(flags: list[str], work: Path, runs: Path, name: str, train_py: Path = ROOT / "train.py") -> tuple[Optional[TrainRun], list[str]]:
    """``train.py FLAGS`` logging to ``runs/name`` (started afresh), output in
    ``work/train.log``; returns the run (None if it failed) and the full command."""
    if work.exists():  # a run killed half-way: start it again
        shutil.rmtree(work)
    work.mkdir(parents=True)
    command = [sys.executable, str(train_py), *flags,
               f"--trainer.logger.init_args.save_dir={runs}", f"--trainer.logger.init_args.name={name}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", WANDB_MODE="disabled")
    start = time.time()
    with open(work / "train.log", "w") as log:
        rc = subprocess.run(command, cwd=train_py.parent, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - start
    results = sorted((runs / name).glob("version_*/test_result.json"))
    tested = "--test=false" not in flags
    if rc != 0 or (tested and not results):
        print(f"FAILED rc={rc}: {name} (see {work / 'train.log'})", flush=True)
        return None, command
    if not tested:  # a SuperNet trained for scoring: no meta-test
        versions = sorted((runs / name).glob("version_*"))
        return TrainRun({}, versions[-1], seconds), command
    return TrainRun(json.loads(results[-1].read_text()), results[-1].parent, seconds), command
