"""Ground truth for the search, version 2: stand-alone accuracy of a fixed set of
architectures, with two training seeds, validation and test columns, and costs.

A weight-sharing search is only as good as the order its SuperNet puts architectures in, and a
search is only worth running if it beats what needs no search. This bench measures both: each
architecture of a fixed set is meta-trained *alone* (``train.py --model.train_arch=FILE``) on
Omniglot 5-way 1-shot at one budget (19,200 tasks) with seeds 0 and 1, and its
best-validation checkpoint is measured on

* 600 validation tasks (``val_acc``): what every choice of the method is made against;
* the 600 test tasks (``test_acc``): read once, for the tables;
* the same test tasks with each query image classified alone, BatchNorm statistics from the
  adapted support images (``test_acc_inductive``): what a deployed model gets.

    .venv/bin/python bench/ground_truth.py --select        # choose the set once (measures latency)
    .venv/bin/python bench/ground_truth.py --lanes 2       # run it, resumable
    .venv/bin/python bench/ground_truth.py --list          # the set, nothing run

The set (``--archs``, written once by ``--select`` and committed) is version 1's 35, the
searches' picks trained alone since, and architectures added so that each cost budget of
``BUDGETS`` holds at least ``--per_budget``: samples of the budget's feasible set stratified by
depth, and each size rule's first choice over the whole space within the budget (the zero-cost
baselines). Latency is the one-image forward time of the standalone network on one thread
(``lightning_metanas.latency.latency_ms``, the function the search's budget uses), measured
during ``--select`` with nothing else running, each next to Conv-4 so the ratio is robust to
the machine's drift. Every finished run is merged into ``--out`` at once (atomically); a
stopped bench continues with the runs not yet there.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import cpu_model, git_commit, load, others_paused, run_in_lanes, run_train, save, shown  # noqa: E402
from lightning_metanas.costs import Budget, CostModel, SpaceCosts  # noqa: E402
from lightning_metanas.latency import LayerLatencyModel, latency_ms  # noqa: E402
from lightning_metanas.search_space import Architecture, ArchitectureError, SearchSpace  # noqa: E402
from lightning_metanas.supernet import SuperNet  # noqa: E402
from lightning_metanas.zero_cost import SIZE_RULES, best_in_budget  # noqa: E402

V1 = ROOT / "bench/ground_truth/omniglot_5w1s.json"
ARCHS = ROOT / "bench/ground_truth/omniglot_5w1s_v2_archs.json"
OUT = ROOT / "bench/ground_truth/omniglot_5w1s_v2.json"
# The three cost budgets of the budgeted search. Latency is relative to Conv-4 on the
# same machine: a third of Conv-4's is below the fastest architecture of the space here (0.37x:
# per-layer overhead dominates one-image inference on CPU), so the budget is half of it.
BUDGETS = {"flops3M": {"max_flops": 3_000_000}, "params40k": {"max_params": 40_000},
           "latency_half": {"latency_ratio": 0.5}}


# The searched arms of RESULTS.md (seed 0 and 1 of the four settings), and the pick of the
# 5-way 1-shot seed-0 search that the same command made on an AMD CPU.
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


def v1_architectures(space: SearchSpace, seed: int = 0, per_depth: int = 4) -> list[tuple[str, Architecture]]:
    """Version 1's 35: Conv-4, the picks of RESULTS.md's first table, Conv-4's one-edit
    neighbours, extremes and a seeded stratified sample, as ``(group, architecture)``."""
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


def in_budget(budget: dict, params: int, flops: int, latency_ratio: Optional[float]) -> bool:
    if "max_flops" in budget and flops > budget["max_flops"]:
        return False
    if "max_params" in budget and params > budget["max_params"]:
        return False
    return "latency_ratio" not in budget or (latency_ratio is not None and latency_ratio <= budget["latency_ratio"])


def measure_latencies(archs: list[Architecture], reference: Architecture, every: int = 8) -> tuple[dict, float]:
    """``latency_ms`` of each architecture and its ratio to Conv-4 timed next to it (Conv-4
    again every ``every`` architectures: the ratio uses the nearest two). Returns
    ``{label: (ms, ratio)}`` and Conv-4's median."""
    found, ref_times = {}, []
    for start in range(0, len(archs), every):
        before = latency_ms(reference)
        chunk = [(a, latency_ms(a)) for a in archs[start:start + every]]
        after = latency_ms(reference)
        ref_times += [before, after]
        for arch, ms in chunk:
            found[str(arch)] = (round(ms, 4), round(ms / ((before + after) / 2), 4))
    return found, statistics.median(ref_times)


def select(args: argparse.Namespace, space: SearchSpace) -> dict:
    """The version-2 set: version 1's 35, the picks trained alone since (version 1's "extra"
    entries), each budget's zero-cost rule picks, and stratified feasible samples until every
    budget holds ``per_budget``; costs and latencies with it."""
    net = SuperNet(space, args.ways, args.channels)
    chosen: list[tuple[str, Architecture]] = list(v1_architectures(space))
    seen = {a for _, a in chosen}
    for entry in load(V1):
        arch = Architecture.of(entry["arch"])
        try:
            space.validate(arch)
        except ArchitectureError:
            continue  # a pick of a space other than this one
        if entry.get("group") == "extra" and arch not in seen:
            chosen.append(("pick", arch))
            seen.add(arch)
    reference = space.reference()
    table = SpaceCosts(space, net, args.image_size)
    print(f"{len(table)} architectures in the space; timing Conv-4 and the layers", flush=True)
    conv4_ms = statistics.median(latency_ms(reference) for _ in range(5))
    layer_model = LayerLatencyModel(space, args.channels, args.image_size)
    estimate = table.additive(layer_model.layer, lambda c_in: 0.0)

    def costs_for(budget: dict) -> CostModel:
        fields = {k: v for k, v in budget.items() if k != "latency_ratio"}
        if "latency_ratio" in budget:
            fields["max_latency_ms"] = budget["latency_ratio"] * conv4_ms
        return CostModel(space, args.ways, args.channels, args.image_size, Budget(**fields), supernet=net)

    for name, budget in BUDGETS.items():
        costs = costs_for(budget)
        for rule in SIZE_RULES:
            arch = best_in_budget(rule, table, costs, estimate)
            if arch is None:
                print(f"  {name}: rule {rule} found nothing within its search limit", flush=True)
            elif arch not in seen:
                chosen.append((f"rule:{name}:{rule}", arch))
                seen.add(arch)
    latencies, conv4_ms = measure_latencies([a for _, a in chosen], reference)
    rng = random.Random(args.arch_seed)
    for name, budget in BUDGETS.items():
        costs = costs_for(budget)
        mask = np.ones(len(table), dtype=bool)
        if "max_flops" in budget:
            mask &= table.flops <= budget["max_flops"]
        if "max_params" in budget:
            mask &= table.params <= budget["max_params"]
        if "latency_ratio" in budget:
            mask &= estimate * 1.1 <= budget["latency_ratio"] * conv4_ms

        def members() -> int:
            return sum(in_budget(budget, net.num_parameters(a), net.flops(a, args.image_size),
                                 latencies[str(a)][1]) for _, a in chosen)

        depths = list(space.depths)
        k = 0
        while members() < args.per_budget:
            if k >= 50 * args.per_budget:  # a budget that (nearly) nothing meets: say so, go on
                print(f"  {name}: {members()} architectures found within it, fewer than {args.per_budget}", flush=True)
                break
            depth = depths[k % len(depths)]
            k += 1
            pool = np.flatnonzero(mask & (table.depth == depth))
            if pool.size == 0:
                continue
            arch = table.arch(int(pool[rng.randrange(pool.size)]))
            if arch in seen:
                continue
            ms, ratio = measure_latencies([arch], reference)[0][str(arch)]
            if "latency_ratio" in budget and ratio > budget["latency_ratio"]:
                continue
            chosen.append((f"budget:{name}", arch))
            seen.add(arch)
            latencies[str(arch)] = (ms, ratio)
    entries = []
    for group, arch in chosen:
        ms, ratio = latencies[str(arch)]
        params, flops = net.num_parameters(arch), net.flops(arch, args.image_size)
        entries.append({"label": str(arch), "group": group, "arch": arch.to_dict(), "params": params,
                        "flops": flops, "latency_ms": ms, "latency_vs_conv4": ratio,
                        "budgets": [n for n, b in BUDGETS.items() if in_budget(b, params, flops, ratio)]})
    return {"machine": cpu_model(), "date": datetime.date.today().isoformat(), "conv4_latency_ms": round(conv4_ms, 4),
            "budgets": BUDGETS, "architectures": entries}


def order(selection: dict) -> list[dict]:
    """Run order: Conv-4, the budgets' rule picks and samples (new), version 1's set, the picks."""
    rank = lambda e: (0 if e["group"] == "reference" else 1 if e["group"].startswith(("rule", "budget"))  # noqa: E731
                      else 3 if e["group"] == "pick" else 2)
    return sorted(selection["architectures"], key=rank)


def evaluate(checkpoint: str, work: Path, split: str, tasks: int, task_seed: int = 0) -> Optional[dict]:
    """The checkpoint's accuracy on ``tasks`` tasks of ``split`` drawn with ``task_seed`` (the
    same tasks for every architecture and training seed), under both normalisations."""
    out = work / f"{split}.json"
    command = [sys.executable, str(ROOT / "eval.py"), "--ckpt_path", checkpoint, "--split", split,
               f"--data.{split}_tasks", str(tasks), "--data.seed", str(task_seed), "--model.meta.norm", "transductive",
               "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with open(work / f"eval_{split}.log", "w") as log:
        rc = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    return json.loads(out.read_text()) if rc == 0 and out.is_file() else None


def run_one(item: dict, seed: int, args: argparse.Namespace) -> Optional[dict]:
    arch = Architecture.of(item["arch"])
    name = f"{item['label'].replace('@', '_')}_seed{seed}"
    runs = Path(args.runs)
    arch_file = runs / f"{name}.arch.json"
    runs.mkdir(parents=True, exist_ok=True)
    arch.save(arch_file)
    flags = ["--config", args.config, f"--model.train_arch={arch_file}", f"--trainer.max_epochs={args.epochs}",
             f"--data.train_batches={args.train_batches}", f"--data.meta_batch_size={args.meta_batch_size}",
             f"--seed_everything={seed}", *args.train_args]
    run, command = run_train(flags, runs / name, runs, name)
    if run is None:
        return None
    result = run.result
    if Architecture.of(result["arch"]) != arch:
        raise RuntimeError(f"{arch}: the run meta-tested {result['arch']}, not the architecture it trained")
    # the run picked its checkpoint on its own seed's 100 validation tasks; every figure below
    # is measured on the same 600 validation and 600 test tasks (task seed 0) for every run
    val = evaluate(result["checkpoint"], runs / name, "val", args.val_tasks)
    test = evaluate(result["checkpoint"], runs / name, "test", args.test_tasks)
    if val is None or test is None:
        print(f"FAILED evaluation: {name} (see {runs / name}/eval_*.log)", flush=True)
        return None
    for ckpt in (runs / name).glob("version_*/checkpoints/*.ckpt"):  # keep the best only
        if str(ckpt) != result["checkpoint"]:
            ckpt.unlink()
    return {
        "seed": seed,
        "val_acc": val["acc_transductive"], "val_acc_inductive": val["acc_support"],
        "test_acc": test["acc_transductive"], "test_acc_inductive": test["acc_support"],
        "ci95": test["acc_transductive_ci95"], "ci95_inductive": test["acc_support_ci95"],
        "val_ci95": val["acc_transductive_ci95"],
        "test_acc_own_tasks": result["acc_transductive"],  # train.py's meta-test: the run's data seed's test tasks
        "best_epoch": int(re.match(r"epoch(\d+)", Path(result["checkpoint"]).stem).group(1)),
        "val_curve": [round(v, 4) for v in run.val_curve()],
        "seconds": round(run.seconds, 1), "machine": args.machine, "commit": args.commit,
        "command": shown(command),
    }


def merge(out: Path, item: dict, record: dict, args: argparse.Namespace) -> dict:
    """``record`` into ``item``'s entry of ``out`` (created on its first run): per-seed runs and
    their means."""
    entries = load(out)
    entry = next((e for e in entries if e["label"] == item["label"]), None)
    if entry is None:
        entry = {k: item[k] for k in ("arch", "label", "group", "params", "flops", "latency_ms", "latency_vs_conv4", "budgets")}
        entry["runs"] = []
        entries.append(entry)
    entry["runs"] = sorted([r for r in entry["runs"] if r["seed"] != record["seed"]] + [record], key=lambda r: r["seed"])
    for key in ("val_acc", "val_acc_inductive", "test_acc", "test_acc_inductive"):
        entry[key] = statistics.fmean(r[key] for r in entry["runs"])
    entry["machine"] = sorted({r["machine"] for r in entry["runs"]})
    entry["commit"] = sorted({r["commit"] for r in entry["runs"]})
    entry["command"] = entry["runs"][0]["command"]
    entry["tasks"] = args.epochs * args.train_batches * args.meta_batch_size
    save(out, entries)
    return entry


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/results/omniglot_5w1s.yaml")
    parser.add_argument("--archs", default=str(ARCHS), help="the architecture set (written by --select)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--runs", default=str(ROOT / "runs/ground_truth_v2"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train_batches", type=int, default=100)
    parser.add_argument("--meta_batch_size", type=int, default=32)
    parser.add_argument("--val_tasks", type=int, default=600)
    parser.add_argument("--test_tasks", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds of every architecture")
    parser.add_argument("--arch_seed", type=int, default=0, help="seed of the stratified samples")
    parser.add_argument("--per_budget", type=int, default=14, help="architectures inside each budget, at least")
    parser.add_argument("--lanes", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--only", nargs="*", default=None, help="run just these labels (added to the set if new)")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many runs (tests)")
    parser.add_argument("--select", action="store_true", help="choose the set, write --archs, and stop")
    parser.add_argument("--list", action="store_true", help="print the set and stop")
    parser.add_argument("--space", default=None, help="JSON of SearchSpace fields (default: the default space)")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--image_size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("train_args", nargs="*", help="further train.py flags, after --")
    args = parser.parse_args(argv)
    space = SearchSpace(**json.loads(args.space)) if args.space else SearchSpace()
    archs_path = Path(args.archs)
    if args.select:
        if archs_path.is_file():
            raise SystemExit(f"{archs_path} exists: the set is chosen once; delete it to choose again")
        save(archs_path, select(args, space))
        print(f"wrote {archs_path}")
    if not archs_path.is_file():
        raise SystemExit(f"no architecture set at {archs_path}: run with --select first")
    selection = json.loads(archs_path.read_text())
    todo = order(selection)
    if args.only:
        known = {e["label"] for e in todo}
        net = SuperNet(space, args.ways, args.channels)
        for label in args.only:
            if label not in known:
                arch = space.validate(parse(label))
                params, flops = net.num_parameters(arch), net.flops(arch, args.image_size)
                with others_paused():  # timed on quiet cores, as the set's own latencies were
                    ms = latency_ms(arch)
                    ratio = ms / latency_ms(space.reference())
                selection["architectures"].append({
                    "label": label, "group": "extra", "arch": arch.to_dict(), "params": params, "flops": flops,
                    "latency_ms": round(ms, 4), "latency_vs_conv4": round(ratio, 4), "machine": cpu_model(),
                    "budgets": [n for n, b in BUDGETS.items() if in_budget(b, params, flops, ratio)]})
        save(archs_path, selection)
        todo = [e for e in order(selection) if e["label"] in set(args.only)]
    if args.select or args.list:
        for e in todo:
            print(f"{e['group']:24s} {e['params']:7d} {e['flops']:9d} {e['latency_vs_conv4']:5.2f} {','.join(e['budgets']):30s} {e['label']}")
        print(f"{len(todo)} architectures; per budget: " + ", ".join(
            f"{n} {sum(n in e['budgets'] for e in todo)}" for n in BUDGETS))
        return 0
    out = Path(args.out)
    done = {(e["label"], r["seed"]) for e in load(out) for r in e["runs"]}
    jobs = [(e, seed) for e in todo for seed in args.seeds if (e["label"], seed) not in done]
    if args.limit is not None:
        jobs = jobs[: args.limit]
    args.commit, args.machine = git_commit(), cpu_model()
    print(f"{len(jobs)} runs to go, {args.epochs * args.train_batches * args.meta_batch_size} meta-training "
          f"tasks each, {args.lanes} lanes, on {args.machine}", flush=True)
    def record(item: tuple[dict, int], run: dict) -> None:
        merge(out, item[0], run, args)
        print(f"{100 * run['val_acc']:6.2f} val {100 * run['test_acc']:6.2f} test "
              f"{100 * run['test_acc_inductive']:6.2f} inductive  epoch {run['best_epoch']}  "
              f"{run['seconds']:7.1f} s  seed {item[1]}  {item[0]['label']}", flush=True)

    run_in_lanes(jobs, lambda item: run_one(item[0], item[1], args), record, args.lanes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
