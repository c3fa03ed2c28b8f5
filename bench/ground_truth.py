"""Ground truth for the search: stand-alone meta-test accuracy of a fixed set of architectures.

A weight-sharing search is only as good as the order its SuperNet puts architectures in. This
bench measures the order that matters: each architecture of a fixed, seeded, stratified set is
meta-trained *alone* (``train.py --model.train_arch=FILE``) at one budget and meta-tested on the
600 test tasks, so that any later way of scoring architectures can be compared against it
without retraining (``bench/ranking.py``).

    .venv/bin/python bench/ground_truth.py                 # two lanes, resumable
    .venv/bin/python bench/ground_truth.py --list          # the architectures, nothing run

Every finished architecture is appended to ``--out`` at once (atomically), so a killed run
continues with the architectures not yet in the file. Each run is one ``train.py`` command,
written into its entry with the commit it ran at.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_metanas.search_space import Architecture, SearchSpace  # noqa: E402
from lightning_metanas.supernet import SuperNet  # noqa: E402

# The searched arms of RESULTS.md (seed 0 and 1 of the four settings), and the pick of the
# 5-way 1-shot seed-0 search that the same command made on an AMD CPU (issue 11).
PICKED = [
    "dil_conv3x3@48-max_pool3x3@64-avg_pool3x3@32",
    "dil_conv3x3@32-conv3x3@64-conv3x3@64-avg_pool3x3@64-conv3x3@32",
    "conv3x3@48-max_pool3x3@32-conv3x3@64-skip@32-skip@48",
    "dil_conv3x3@32-dil_conv3x3@64-max_pool3x3@32-max_pool3x3@32",
    "conv3x3@48-max_pool3x3@32-dil_conv3x3@64-skip@48-dil_conv3x3@48",
    "conv5x5@64-avg_pool3x3@32-conv3x3@48-conv5x5@48-skip@64",
    "conv3x3@48-avg_pool3x3@48-conv5x5@64-conv5x5@32-skip@64",
    "skip@64-dil_conv3x3@32-conv5x5@64",
    "conv5x5@32-conv3x3@48-conv5x5@32-max_pool3x3@32-conv3x3@64",
]


def parse(label: str) -> Architecture:
    """``conv3x3@64-skip@32`` -> Architecture (the form ``str(arch)`` prints)."""
    ops, widths = zip(*(layer.split("@") for layer in label.split("-")))
    return Architecture(tuple(ops), tuple(int(w) for w in widths))


def neighbours(space: SearchSpace, arch: Architecture) -> list[Architecture]:
    """One edit away from ``arch``: each other op at one layer (layers spread so that every
    layer is edited), each other width at one layer, one layer fewer and one more."""
    found: list[Architecture] = []
    others = [op for op in space.ops if op != arch.ops[0]]
    for k, op in enumerate(others):
        i = k % arch.depth
        ops = list(arch.ops)
        ops[i] = op
        found.append(Architecture(tuple(ops), arch.widths))
    for k, width in enumerate(w for w in space.widths if w != arch.widths[0]):
        i = (arch.depth - 1 - k) % arch.depth
        widths = list(arch.widths)
        widths[i] = width
        found.append(Architecture(arch.ops, tuple(widths)))
    if arch.depth - 1 in space.depths:
        found.append(Architecture(arch.ops[:-1], arch.widths[:-1]))
    if arch.depth + 1 in space.depths:
        found.append(Architecture(arch.ops + arch.ops[-1:], arch.widths + arch.widths[-1:]))
    return found


def stratified(space: SearchSpace, per_depth: int, rng: random.Random) -> list[Architecture]:
    """``per_depth`` architectures of every depth, with the ops of each layer slot dealt from a
    shuffled deck (every op equally often, up to rounding) and the widths likewise, so that
    the sample covers the space evenly rather than by luck."""
    found = []
    for depth in space.depths:
        op_deck = [space.ops[i % len(space.ops)] for i in range(per_depth * depth)]
        width_deck = [space.widths[i % len(space.widths)] for i in range(per_depth * depth)]
        rng.shuffle(op_deck)
        rng.shuffle(width_deck)
        for k in range(per_depth):
            found.append(Architecture(
                tuple(op_deck[k * depth:(k + 1) * depth]), tuple(width_deck[k * depth:(k + 1) * depth])
            ))
    return found


def architectures(space: SearchSpace, seed: int = 0, per_depth: int = 4) -> list[tuple[str, Architecture]]:
    """The ground-truth set, as ``(group, architecture)`` in the order it is run (most
    informative first, so a partial table is already useful), without repeats."""
    reference = space.reference()
    widest = Architecture((reference.ops[0],) * space.max_depth, (space.max_width,) * space.max_depth)
    groups: list[tuple[str, list[Architecture]]] = [
        ("reference", [reference]),
        ("picked", [parse(p) for p in PICKED]),
        ("neighbour", neighbours(space, reference)),
        ("extreme", [
            Architecture(reference.ops, (space.widths[0],) * reference.depth),  # Conv-4 at 32
            Architecture(("conv5x5",) * space.max_depth, (space.max_width,) * space.max_depth),
            widest,
            Architecture(("skip",) * space.depths[0], (space.widths[0],) * space.depths[0]),
        ]),
        ("stratified", stratified(space, per_depth, random.Random(seed))),
    ]
    seen: set[Architecture] = set()
    ordered = []
    for group, archs in groups:
        for arch in archs:
            try:
                space.validate(arch)
            except Exception:
                continue  # a pick or extreme the (narrower) space does not hold
            if arch not in seen:
                seen.add(arch)
                ordered.append((group, arch))
    return ordered


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def save(path: Path, entries: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(entries, indent=1) + "\n")
    os.replace(tmp, path)


def run_one(arch: Architecture, group: str, args: argparse.Namespace, space: SearchSpace,
            ways: int, image_size: int, channels: int) -> Optional[dict]:
    name = str(arch).replace("@", "_")
    work = Path(args.runs) / name
    if work.exists():  # a run killed half-way: start it again
        shutil.rmtree(work)
    work.mkdir(parents=True)
    arch_file = work / "arch.json"
    arch.save(arch_file)
    command = [
        sys.executable, str(ROOT / "train.py"), "--config", args.config,
        f"--model.train_arch={arch_file}",
        f"--trainer.max_epochs={args.epochs}",
        f"--data.train_batches={args.train_batches}",
        f"--data.meta_batch_size={args.meta_batch_size}",
        f"--seed_everything={args.seed}", f"--model.seed={args.seed}", f"--data.seed={args.seed}",
        f"--trainer.logger.init_args.save_dir={args.runs}",
        f"--trainer.logger.init_args.name={name}",
        *args.train_args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", WANDB_MODE="disabled")
    start = time.time()
    with open(work / "train.log", "w") as log:
        rc = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - start
    results = sorted(work.glob("version_*/test_result.json"))
    if rc != 0 or not results:
        print(f"FAILED rc={rc}: {arch} (see {work / 'train.log'})", flush=True)
        return None
    result = json.loads(results[-1].read_text())
    if Architecture.from_dict(result["arch"]) != arch:
        raise RuntimeError(f"{arch}: the run meta-tested {result['arch']}, not the architecture it trained")
    net = SuperNet(space, ways, channels)
    shown = [c if i < 2 else os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c
             for i, c in enumerate(command)]
    return {
        "arch": arch.to_dict(),
        "label": str(arch),
        "group": group,
        "acc": result["acc"],
        "ci95": result["acc_ci95"],
        "test_tasks": result["tasks"],
        "best_checkpoint": Path(result["checkpoint"]).name,
        "params": net.num_parameters(arch),
        "flops": net.flops(arch, image_size),
        "tasks": args.epochs * args.train_batches * args.meta_batch_size,
        "seconds": round(seconds, 1),
        "seed": args.seed,
        "command": " ".join(["python", *shown[1:]]),
        "commit": args.commit,
        "machine": args.machine,
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/results/omniglot_5w1s.yaml")
    parser.add_argument("--out", default=str(ROOT / "bench/ground_truth/omniglot_5w1s.json"))
    parser.add_argument("--runs", default=str(ROOT / "runs/ground_truth"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train_batches", type=int, default=100)
    parser.add_argument("--meta_batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run")
    parser.add_argument("--arch_seed", type=int, default=0, help="seed of the stratified sample")
    parser.add_argument("--per_depth", type=int, default=4, help="stratified architectures per depth")
    parser.add_argument("--lanes", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--only", nargs="*", default=None, help="run just these labels (e.g. extra seeds)")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many (tests)")
    parser.add_argument("--list", action="store_true", help="print the architectures and stop")
    parser.add_argument("--space", default=None, help="JSON of SearchSpace fields (default: the default space)")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--image_size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("train_args", nargs="*", help="further train.py flags, after --")
    args = parser.parse_args(argv)
    space = SearchSpace(**json.loads(args.space)) if args.space else SearchSpace()
    todo = architectures(space, args.arch_seed, args.per_depth)
    if args.only:
        wanted = set(args.only)
        todo = [(g, a) for g, a in todo if str(a) in wanted] + [
            ("extra", space.validate(parse(label))) for label in args.only
            if label not in {str(a) for _, a in todo}
        ]
    if args.list:
        for group, arch in todo:
            print(f"{group:10s} {arch}")
        print(f"{len(todo)} architectures")
        return 0
    out = Path(args.out)
    done = {(e["label"], e["seed"], e["tasks"]) for e in load(out)}
    budget = args.epochs * args.train_batches * args.meta_batch_size
    todo = [(g, a) for g, a in todo if (str(a), args.seed, budget) not in done]
    if args.limit is not None:
        todo = todo[: args.limit]
    args.commit, args.machine = git_commit(), cpu_model()
    print(f"{len(todo)} architectures to run, {budget} meta-training tasks each, {args.lanes} lanes", flush=True)
    lock = threading.Lock()

    def job(item: tuple[str, Architecture]) -> None:
        group, arch = item
        entry = run_one(arch, group, args, space, args.ways, args.image_size, args.channels)
        if entry is None:
            return
        with lock:
            entries = load(out)
            entries.append(entry)
            save(out, entries)
        print(f"{100 * entry['acc']:6.2f} ± {100 * entry['ci95']:.2f}  {entry['seconds']:7.1f} s  {arch}", flush=True)

    with ThreadPoolExecutor(max(1, args.lanes)) as pool:
        list(pool.map(job, todo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
