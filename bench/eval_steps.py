"""How many adaptation steps to take on a new task, chosen on validation, reported on test.

The results table meta-tests every network with the checkpoint's ``eval_inner_steps`` (the
protocol's count: 3 at 5-way, 5 at 20-way, as in MAML), while ``adapt.py`` fine-tunes a user's
model for 20 steps by default.
For a network deployed one image at a time (each query normalised with the adapted support
images' statistics) the step count is a deployment setting like any other, so it is chosen
here the way every setting of this project is: the count with the best mean **validation**
accuracy one image at a time over an arm's seeds, then that count, and the protocol's beside
it, on **test**. Each cell is one ``eval.py`` run on a finished results run's best checkpoint;
the same run also gives the transductive figure at that count, so what the steps buy the one
image at a time is set against what they buy the transductive figure. Resumable.

    .venv/bin/python bench/eval_steps.py --results bench/results/omniglot_epochs28.json \\
        --arms search_pick_support conv4_support --split val --steps 1 3 5 10 20
    .venv/bin/python bench/eval_steps.py --results bench/results/omniglot_epochs28.json \\
        --arms search_pick_support conv4_support --split test --chosen
    .venv/bin/python bench/eval_steps.py --results bench/results/omniglot.json --settings 20w1s \\
        --arms search_pick_support --split val --steps 1 3 5 10 20
    .venv/bin/python bench/eval_steps.py --table
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, git_commit, load, run_in_lanes, save, shown  # noqa: E402
from lightning_metanas.checkpoints import read_checkpoint  # noqa: E402

OUT = ROOT / "bench/results/eval_steps.json"


def run_name(entry: dict) -> str:
    """The folder ``bench/results.py`` gave the run (``runs/results/<name>``)."""
    epochs = entry.get("epochs")
    return f"{entry['setting']}_{entry['arm']}_seed{entry['seed']}" + (f"_{epochs}ep" if epochs else "")


def checkpoint_of(entry: dict, runs: Path) -> Path:
    """The run's best-validation checkpoint, the one its test figure came from."""
    found = sorted((runs / run_name(entry)).glob(f"version_*/checkpoints/{entry['best_checkpoint']}"))
    if not found:
        raise FileNotFoundError(f"no checkpoint {entry['best_checkpoint']} under {runs / run_name(entry)}: "
                                "run bench/results.py for it first, or pass --runs")
    return found[-1]


def group(record: dict) -> tuple[str, str, str]:
    """What a choice is made for: one arm at one setting of one results file."""
    return (record["results"], record["setting"], record["arm"])


def protocol_steps(checkpoint: Path) -> int:
    """The adaptation steps the run was meta-tested with (its ``eval_inner_steps``)."""
    return int(read_checkpoint(checkpoint)["hyper_parameters"]["meta"]["eval_inner_steps"])


def key(record: dict) -> tuple:
    return (*group(record), record["seed"], record["split"], record["steps"])


def choose_steps(records: Iterable[dict], results: str, setting: str, arm: str) -> Optional[int]:
    """The step count with the best mean validation accuracy one image at a time over the arm's
    seeds, among counts measured at every seed; ties go to fewer steps (cheaper to adapt)."""
    val = [r for r in records if group(r) == (results, setting, arm) and r["split"] == "val"]
    seeds = {r["seed"] for r in val}
    by_steps: dict[int, list[float]] = {}
    for r in val:
        by_steps.setdefault(r["steps"], []).append(r["acc_support"])
    complete = {s: statistics.fmean(a) for s, a in by_steps.items() if len(a) == len(seeds)}
    if not complete:
        return None
    return min(complete, key=lambda s: (-round(complete[s], 6), s))


def evaluate(entry: dict, results: str, split: str, steps: int, runs: Path) -> dict:
    """One ``eval.py`` run: the checkpoint on ``split`` with ``steps`` adaptation steps."""
    checkpoint = checkpoint_of(entry, runs)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        command = [sys.executable, str(ROOT / "eval.py"), "--ckpt_path", str(checkpoint), "--split", split,
                   "--model.meta.eval_inner_steps", str(steps), "--model.meta.norm", "support", "--out", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", WANDB_MODE="disabled")
        start = time.time()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.time() - start
        if done.returncode != 0:
            raise RuntimeError(f"{shown(command)} failed:\n{done.stderr[-2000:]}")
        result = json.loads(out.read_text())
    return {
        "results": results, "setting": entry["setting"], "arm": entry["arm"], "seed": entry["seed"],
        "epochs": entry.get("epochs"), "split": split, "steps": steps, "tasks": result["tasks"],
        "acc_support": result["acc_support"], "ci95_support": result["acc_support_ci95"],
        "acc_transductive": result["acc_transductive"], "ci95_transductive": result["acc_transductive_ci95"],
        "protocol_steps": protocol_steps(checkpoint),
        "label": entry["label"], "checkpoint": os.path.relpath(checkpoint, ROOT),
        "seconds": round(seconds, 1), "command": shown(command[:-2]),
    }


def _mean_sd(values: list[float]) -> str:
    values = [100 * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def table(records: list[dict]) -> str:
    """Per (results file, setting, arm): validation at every count, the chosen count, and test at the
    chosen count and at the checkpoint's own count (mean ± sd over seeds; per-seed test figures)."""
    lines = ["| results file | setting | arm | seeds | validation, one image at a time (transductive), by steps | "
             "chosen on validation | protocol's count | test at the protocol's count: one image / transductive | "
             "test at the chosen count: one image / transductive | per seed, test one image: protocol → chosen |",
             "| --- | --- | --- | --- | --- | ---: | ---: | --- | --- | --- |"]
    for results, setting, arm in sorted({group(r) for r in records}):
        mine = [r for r in records if group(r) == (results, setting, arm)]
        chosen = choose_steps(mine, results, setting, arm)
        seeds = sorted({r["seed"] for r in mine if r["split"] == "val"})
        val_cells = []
        for steps in sorted({r["steps"] for r in mine if r["split"] == "val"}):
            at = [r for r in mine if r["split"] == "val" and r["steps"] == steps]
            if len(at) == len(seeds):
                val_cells.append(f"{steps}: {100 * statistics.fmean(r['acc_support'] for r in at):.2f} "
                                 f"({100 * statistics.fmean(r['acc_transductive'] for r in at):.2f})")

        def test_at(steps: Optional[int]) -> list[dict]:
            return sorted((r for r in mine if r["split"] == "test" and r["steps"] == steps), key=lambda r: r["seed"])

        def cell(rows: list[dict]) -> str:
            if not rows:
                return "—"
            return (f"**{_mean_sd([r['acc_support'] for r in rows])}** / "
                    f"{_mean_sd([r['acc_transductive'] for r in rows])} ({len(rows)} seeds)")

        protocol = {r["protocol_steps"] for r in mine}
        if len(protocol) != 1:
            raise ValueError(f"{results} {setting} {arm}: runs meta-tested with different step counts {protocol}")
        base, best = test_at(*protocol), test_at(chosen)
        pairs = {r["seed"]: r for r in base}
        per_seed = ", ".join(f"{r['seed']}: {100 * pairs[r['seed']]['acc_support']:.2f} → {100 * r['acc_support']:.2f}"
                             for r in best if r["seed"] in pairs)
        lines.append(f"| `{results}` | {setting} | {arm} | {', '.join(map(str, seeds))} | {'; '.join(val_cells)} | "
                     f"{chosen if chosen is not None else '—'} | {protocol.pop()} | {cell(base)} | {cell(best)} | {per_seed or '—'} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(ROOT / "bench/results/omniglot_epochs28.json"),
                        help="a bench/results.py file whose runs' checkpoints are evaluated")
    parser.add_argument("--settings", nargs="+", default=["5w1s"])
    parser.add_argument("--arms", nargs="+", default=["search_pick_support", "conv4_support"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 3, 5, 10, 20])
    parser.add_argument("--chosen", action="store_true",
                        help="on --split test: the count chosen on validation per arm, and the checkpoint's own")
    parser.add_argument("--runs", default=str(ROOT / "runs/results"))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.table:
        print(table(load(out)))
        return 0
    if any(s < 1 for s in args.steps):
        parser.error(f"--steps must be 1 or more, got {args.steps}")
    if args.chosen and args.split != "test":
        parser.error("--chosen reports on test: pass --split test (the choice itself is made on --split val)")
    results = os.path.relpath(Path(args.results).resolve(), ROOT)
    entries = [e for e in load(Path(args.results))
               if e["setting"] in args.settings and e["arm"] in args.arms and e["seed"] in args.seeds]
    wanted = {(g, a, s) for g in args.settings for a in args.arms for s in args.seeds}
    missing = sorted(wanted - {(e["setting"], e["arm"], e["seed"]) for e in entries})
    if missing:
        parser.error(f"{results} has no run for {missing}: run bench/results.py for them first")
    records = load(out)
    jobs = []
    for entry in entries:
        counts = args.steps
        if args.chosen:
            chosen = choose_steps(records, results, entry["setting"], entry["arm"])
            if chosen is None:
                parser.error(f"no complete validation sweep for {entry['setting']} {entry['arm']} in {out}: "
                             "run --split val first")
            counts = sorted({protocol_steps(checkpoint_of(entry, Path(args.runs))), chosen})
        jobs += [(entry, steps) for steps in counts]
    done = {key(r) for r in records}
    todo = [(e, s) for e, s in jobs if (results, e["setting"], e["arm"], e["seed"], args.split, s) not in done]
    todo.sort(key=lambda job: -job[1])  # the longest first, so the lanes end together
    commit, machine = git_commit(), cpu_model()
    print(f"{len(todo)} evaluations to do, {args.lanes} lanes", flush=True)

    def record(job: tuple[dict, int], entry: dict) -> None:
        save(out, load(out) + [dict(entry, commit=commit, machine=machine)])
        print(f"{job[0]['setting']} {job[0]['arm']} seed {job[0]['seed']} {args.split} {job[1]} steps: one image "
              f"{100 * entry['acc_support']:.2f}, transductive {100 * entry['acc_transductive']:.2f} "
              f"({entry['seconds']:.0f} s)", flush=True)

    run_in_lanes(todo, lambda job: evaluate(job[0], results, args.split, job[1], Path(args.runs)), record, args.lanes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
