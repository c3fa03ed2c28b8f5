#!/usr/bin/env python
"""The decoded-image cache on a dataset of miniImageNet's size: decode time, cached start, peak RSS.

    python bench/fake_miniimagenet.py /tmp/fake_miniimagenet      # 60,000 84x84 RGB JPEGs, once
    python bench/dataset_cache.py /tmp/fake_miniimagenet           # about 5 minutes here

Each measurement is a fresh process (its wall time and peak resident memory, ``ru_maxrss``
from ``os.wait4``, are its own):

1. first decode: the cache removed, the data module decodes every image into
   ``<root>/.cache`` (what the first run on a dataset pays once);
2. cached start: the same in a new process with the cache in place (what every later run and
   every DDP rank pays: list the files, check the fingerprint, open the cache);
3. a short meta-training run: ``train.py --config configs/miniimagenet_5w1s_cpu.yaml`` for
   ``--batches`` meta-batches and as many validation tasks, on the cached dataset;
4. the same run on in-memory synthetic data of the same shape (84x84 RGB, 5-way 1-shot, 5
   queries): the memory the process needs anyway, without any dataset.

The peak RSS of run 3 against run 4 is what the dataset adds to a process; the decoded
dataset itself (1.27 GB for miniImageNet) stays in the page cache, shared. Prints a Markdown
table and, with ``--out``, writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOAD = """
import time, sys
started = time.perf_counter()
from lightning_metanas.data import EpisodicDataModule
imported = time.perf_counter()
dm = EpisodicDataModule(dataset="miniimagenet", root=sys.argv[1], image_size=84, ways=5, queries=15)
dm.setup("fit")
task = dm.task_dataset("train")[0]
print(f"data_ready_s={time.perf_counter() - imported:.2f} channels={dm.image_channels} classes={sum(len(ids) for ids in dm.class_splits().values())}")
"""


def measure(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command``; its wall seconds, peak RSS (MB), exit status and last output line."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{out[-3000:]}")
    lines = [line for line in out.strip().splitlines() if line.strip()]
    return {"wall_s": round(time.perf_counter() - started, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "last_line": lines[-1] if lines else "", "output": out}


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="A dataset written by bench/fake_miniimagenet.py (or a real one).")
    parser.add_argument("--batches", type=int, default=20, help="Meta-batches (and validation tasks) of the short run.")
    parser.add_argument("--out", type=Path, default=None, help="Write the figures here as JSON.")
    args = parser.parse_args(argv)
    root = args.root.absolute()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
    python = sys.executable
    files = sum(1 for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)
    for old in (root / ".cache").glob("miniimagenet-84px-*.u8"):
        old.unlink()

    figures: dict = {"dataset": str(root), "images": files, "dataset_on_disk_gb": round(disk / 1e9, 2),
                     "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "load_before": Path("/proc/loadavg").read_text().split()[:3]}
    print(f"load average before: {' '.join(figures['load_before'])}", flush=True)
    first = measure([python, "-c", LOAD, str(root)], env)
    [cache] = (root / ".cache").glob("miniimagenet-84px-*.u8")
    figures["first_decode"] = {k: first[k] for k in ("wall_s", "peak_rss_mb", "last_line")}
    figures["decode_line"] = next(l for l in first["output"].splitlines() if l.startswith("decoded "))
    figures["cache_gb"] = round(cache.stat().st_size / 1e9, 3)
    print(f"first decode: {figures['first_decode']}\n  {figures['decode_line']}", flush=True)
    cached = measure([python, "-c", LOAD, str(root)], env)
    figures["cached_start"] = {k: cached[k] for k in ("wall_s", "peak_rss_mb", "last_line")}
    print(f"cached start: {figures['cached_start']}", flush=True)

    short = ["--config", "configs/miniimagenet_5w1s_cpu.yaml", "--trainer.max_epochs=1",
             f"--data.train_batches={args.batches}", f"--data.val_tasks={args.batches}", "--test=false",
             "--trainer.enable_progress_bar=false"]
    with tempfile.TemporaryDirectory() as runs:
        train = measure([python, "train.py", *short, f"--data.root={root}",
                         f"--trainer.logger.init_args.save_dir={runs}"], env)
        figures["short_run"] = {k: train[k] for k in ("wall_s", "peak_rss_mb")}
        print(f"short run on the cached dataset: {figures['short_run']}", flush=True)
        baseline = measure([python, "train.py", *short, "--data.dataset=synthetic", "--data.channels=3",
                            f"--trainer.logger.init_args.save_dir={runs}"], env)
        figures["short_run_synthetic"] = {k: baseline[k] for k in ("wall_s", "peak_rss_mb")}
        print(f"the same run on in-memory synthetic data: {figures['short_run_synthetic']}", flush=True)
    figures["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    figures["command"] = " ".join(["python bench/dataset_cache.py", str(args.root), f"--batches {args.batches}"])

    decoded = figures["cache_gb"]
    print(f"\nload average after: {' '.join(figures['load_after'])}\n")
    print("| measurement | wall time | peak RSS |\n|---|---|---|")
    print(f"| first decode of {files} images ({figures['dataset_on_disk_gb']} GB of files) into a "
          f"{decoded} GB cache | {figures['first_decode']['wall_s']} s | {figures['first_decode']['peak_rss_mb']} MB |")
    print(f"| cached start (a new process: list, fingerprint, open the cache) | {figures['cached_start']['wall_s']} s "
          f"| {figures['cached_start']['peak_rss_mb']} MB |")
    print(f"| short meta-training run, {args.batches} meta-batches + {args.batches} validation tasks | "
          f"{figures['short_run']['wall_s']} s | {figures['short_run']['peak_rss_mb']} MB |")
    print(f"| the same run on in-memory synthetic data (no dataset) | {figures['short_run_synthetic']['wall_s']} s "
          f"| {figures['short_run_synthetic']['peak_rss_mb']} MB |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
