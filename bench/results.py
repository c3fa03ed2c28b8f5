"""RESULTS.md's equal-budget table: the searched architecture vs Conv-4, four Omniglot settings,
several seeds, resumable.

Each run is the command written in the header of ``configs/results/omniglot_<setting>.yaml``
(the ``Conv-4`` or the ``searched`` line) with every seed set to the run's seed. Runs go side by
side in lanes (one torch thread each); every finished run is appended to ``--out`` at once, so a
stopped bench continues with the runs not yet recorded.

    .venv/bin/python bench/results.py                       # all settings, both arms, seeds 0-2
    .venv/bin/python bench/results.py --arms conv4 --seeds 0 1 2
    .venv/bin/python bench/results_table.py                 # the markdown table from --out
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ground_truth import cpu_model, git_commit, load, save  # noqa: E402
from lightning_metanas.search_space import Architecture, SearchSpace  # noqa: E402
from lightning_metanas.supernet import SuperNet  # noqa: E402

SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")
ARMS = {"conv4": "Conv-4 (MAML baseline)", "search": "searched"}


def arm_command(setting: str, arm: str) -> list[str]:
    """The arm's ``train.py`` arguments from the config's header line, without the logger name
    (each run gets its own)."""
    config = ROOT / "configs" / "results" / f"omniglot_{setting}.yaml"
    for line in config.read_text().splitlines():
        match = re.match(r"#\s+(.+?):\s+python train\.py (.*)$", line)
        if match and match.group(1) == ARMS[arm]:
            words = shlex.split(match.group(2))
            return [w for w in words if not w.startswith("--trainer.logger.init_args.name=")]
    raise SystemExit(f"{config} has no '#   {ARMS[arm]}: python train.py ...' header line")


def seed_flags(seed: int) -> list[str]:
    """The run's one seed (train.py derives the model's, the data's and the search's from it)."""
    return [f"--seed_everything={seed}"]


def run_one(setting: str, arm: str, seed: int, args: argparse.Namespace) -> Optional[dict]:
    name = f"{setting}_{arm}_seed{seed}"
    work = Path(args.runs) / name
    if work.exists():  # a run stopped half-way: start it again
        shutil.rmtree(work)
    work.mkdir(parents=True)
    flags = arm_command(setting, arm) + seed_flags(seed) + [
        f"--trainer.logger.init_args.save_dir={args.runs}", f"--trainer.logger.init_args.name={name}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", WANDB_MODE="disabled")
    start = time.time()
    with open(work / "train.log", "w") as log:
        rc = subprocess.run([sys.executable, str(ROOT / "train.py"), *flags], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - start
    results = sorted(work.glob("version_*/test_result.json"))
    if rc != 0 or not results:
        print(f"FAILED rc={rc}: {name} (see {work / 'train.log'})", flush=True)
        return None
    result = json.loads(results[-1].read_text())
    arch = Architecture.from_dict(result["arch"])
    config = yaml.safe_load((results[-1].parent / "config.yaml").read_text())
    model = config["model"]
    space = SearchSpace(**model.get("search_space") or {})
    net = SuperNet(space, result["ways"], 1)
    history = results[-1].parent / "checkpoints" / "search_history.json"
    entry = {
        "setting": setting, "arm": arm, "seed": seed,
        "acc": result["acc"], "ci95": result["acc_ci95"], "test_tasks": result["tasks"],
        "arch": arch.to_dict(), "label": str(arch),
        "params": net.num_parameters(arch), "flops": net.flops(arch, config["data"]["image_size"]),
        "best_checkpoint": Path(result["checkpoint"]).name,
        "generations": len(json.loads(history.read_text())) if history.is_file() else 0,
        "seconds": round(seconds, 1),
        "command": "python train.py " + " ".join(shlex.quote(f) for f in flags if "logger.init_args.save_dir" not in f),
        "commit": args.commit, "machine": args.machine,
    }
    return entry


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "bench/results/omniglot.json"))
    parser.add_argument("--runs", default=str(ROOT / "runs/results"))
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--list", action="store_true", help="print the commands and stop")
    args = parser.parse_args(argv)
    out = Path(args.out)
    done = {(e["setting"], e["arm"], e["seed"]) for e in load(out)}
    # slowest first, so that the lanes finish together
    order = {"20w5s": 0, "20w1s": 1, "5w5s": 2, "5w1s": 3}
    todo = sorted(
        ((s, a, seed) for seed in args.seeds for s in args.settings for a in args.arms if (s, a, seed) not in done),
        key=lambda job: (job[2], order[job[0]], job[1]),
    )
    if args.list:
        for setting, arm, seed in todo:
            print(" ".join(["python train.py", *arm_command(setting, arm), *seed_flags(seed)]))
        return 0
    args.commit, args.machine = git_commit(), cpu_model()
    print(f"{len(todo)} runs to do, {args.lanes} lanes", flush=True)
    lock = threading.Lock()

    def job(item: tuple[str, str, int]) -> None:
        entry = run_one(*item, args)
        if entry is None:
            return
        with lock:
            entries = load(out)
            entries.append(entry)
            save(out, entries)
        print(f"{item}: {100 * entry['acc']:.2f} ± {100 * entry['ci95']:.2f} {entry['label']} "
              f"{entry['seconds']:.0f} s", flush=True)

    with ThreadPoolExecutor(max(1, args.lanes)) as pool:
        list(pool.map(job, todo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
