"""Meta-train step: this project's ``MetaNASModule.training_step`` vs a plain learn2learn loop.

    .venv/bin/python bench/meta_step.py            # the table in BENCHMARKS.md (< 5 min)
    .venv/bin/python bench/meta_step.py --variants # plus the alternatives that were tried

Contenders, on the same Omniglot 5-way 1-shot tasks (1 query per class, as learn2learn's
``examples/vision/maml_omniglot.py``), meta-batch 32, 1 and 5 inner steps:

(a) ``plain``: the loop learn2learn's example writes by hand: a Conv-4 ``nn.Sequential``
    (as ``l2l.vision.models.OmniglotCNN``: conv3x3 -> BatchNorm2d -> ReLU -> MaxPool2d(2), x4,
    mean over space, linear head; BatchNorm with ``track_running_stats=False`` and convs
    without bias, to be the same network as the project's Conv-4 path), wrapped in
    ``l2l.algorithms.MAML(model, lr, first_order=...)``; per task ``clone()``, ``adapt()``
    per inner step, query loss, ``backward()``; then gradients / 32 and ``Adam.step()``.
    The example's per-iteration meta-validation task is left out (it is not part of a step).
(b) ``project``: ``MetaNASModule(train_arch="reference")`` (the default search space's
    SuperNet, Conv-4 path fixed), ``training_step`` + ``backward()`` + ``Adam.step()``, as
    Lightning's automatic optimisation runs it, in each ``meta_gradient`` mode.

Task sampling is outside the timed region for both: one subprocess draws the meta-batches
once and saves them; every other subprocess loads the same file.
Timing: all configurations in one subprocess, interleaved (every repetition runs every
configuration on the same meta-batch), after a warm-up step; the median per-step time is
reported (at most ``--reps`` repetitions; after 3, none starts once ``--budget`` seconds are
spent, which keeps a run on a loaded machine under five minutes).
Peak memory: one fresh subprocess per configuration loads the tasks, builds the contender,
runs one step and reports ``ru_maxrss`` (``before step``: its value before the step). The
parent process imports no torch, so the ``ru_maxrss`` its children inherit across
``execve`` is smaller than their own (checked against ``VmHWM``).
torch uses 2 threads in every subprocess (``torch.set_num_threads(2)``); the project's step
spreads its tasks over 2 worker threads with 1 intra-op thread each (see parallel.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if os.environ.get("META_STEP_BENCH_ROLE"):  # the measuring subprocesses
    import torch
    import torch.nn.functional as F
    from torch import nn

    Module = nn.Module
else:  # the parent only starts them and prints: it stays small (see role_memory)
    Module = object

WAYS, SHOTS, QUERIES, META_BATCH = 5, 1, 1, 32
INNER_LR, META_LR = 0.4, 0.003
THREADS = 2


# -- tasks ---------------------------------------------------------------------------------
def sample_tasks(root: str, batches: int, seed: int = 0) -> list:
    from lightning_metanas.data import EpisodicDataModule

    dm = EpisodicDataModule(
        dataset="omniglot", root=root, ways=WAYS, shots=SHOTS, queries=QUERIES,
        meta_batch_size=META_BATCH, train_batches=batches, seed=seed,
    )
    dm.setup("fit")
    out = []
    for batch in dm.train_dataloader():
        out.append(tuple(t.contiguous() for t in batch))
        if len(out) == batches:
            break
    return out


# -- (a) the plain learn2learn loop ---------------------------------------------------------
def conv4(ways: int = WAYS) -> "nn.Module":
    """learn2learn's OmniglotCNN, as an nn.Sequential (l2l.vision needs torchvision)."""
    layers: list[nn.Module] = []
    for i in range(4):
        conv = nn.Conv2d(1 if i == 0 else 64, 64, 3, padding=1, bias=False)
        nn.init.xavier_uniform_(conv.weight)  # l2l's maml_init_
        bn = nn.BatchNorm2d(64, affine=True, track_running_stats=False)
        nn.init.uniform_(bn.weight)
        layers += [conv, bn, nn.ReLU(), nn.MaxPool2d(2, 2)]
    return nn.Sequential(*layers, nn.Flatten(2), Mean(), nn.Linear(64, ways))


class Mean(Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=-1)


def accuracy(predictions, targets):
    predictions = predictions.argmax(dim=1).view(targets.shape)
    return (predictions == targets).sum().float() / targets.size(0)


def fast_adapt(task, learner, loss, adaptation_steps):
    adaptation_data, adaptation_labels, evaluation_data, evaluation_labels = task
    for _ in range(adaptation_steps):
        train_error = loss(learner(adaptation_data), adaptation_labels)
        learner.adapt(train_error)
    predictions = learner(evaluation_data)
    valid_error = loss(predictions, evaluation_labels)
    valid_accuracy = accuracy(predictions, evaluation_labels)
    return valid_error, valid_accuracy


def plain_contender(mode: str, steps: int):
    import learn2learn as l2l

    torch.manual_seed(0)
    model = conv4()
    maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=mode == "first_order")
    opt = torch.optim.Adam(maml.parameters(), META_LR)
    loss = nn.CrossEntropyLoss(reduction="mean")

    def step(batch):
        opt.zero_grad()
        meta_train_error = 0.0
        meta_train_accuracy = 0.0
        for task in range(batch[0].shape[0]):
            learner = maml.clone()
            evaluation_error, evaluation_accuracy = fast_adapt(
                tuple(t[task] for t in batch), learner, loss, steps
            )
            evaluation_error.backward()
            meta_train_error += evaluation_error.item()
            meta_train_accuracy += evaluation_accuracy.item()
        for p in maml.parameters():
            p.grad.data.mul_(1.0 / batch[0].shape[0])
        opt.step()

    return step


# -- (b) this project's step -----------------------------------------------------------------
def project_module(mode: str, steps: int, fd_epsilon: float = 0.01):
    from lightning_metanas.maml import MetaConfig
    from lightning_metanas.module import MetaNASModule

    torch.manual_seed(0)
    meta = MetaConfig(inner_lr=INNER_LR, inner_steps=steps, meta_lr=META_LR,
                      meta_gradient=mode, fd_epsilon=fd_epsilon)
    return MetaNASModule(ways=WAYS, image_size=28, meta=meta, train_arch="reference")


def project_contender(mode: str, steps: int):
    module = project_module(mode, steps)
    opt = module.configure_optimizers()
    step_index = [0]

    def step(batch):
        opt.zero_grad()
        loss = module.training_step(batch, step_index[0])  # self.log: no Trainer, returns
        loss.backward()
        opt.step()
        step_index[0] += 1

    return step


# -- variants that were tried (--variants) ---------------------------------------------------
def l2l_clone_contender(mode: str, steps: int):
    """The project's step before this change: learn2learn clone()/adapt() of the whole
    SuperNet per task, one backward through all task graphs."""
    from tests.maml_reference import l2l_adapt

    module = project_module(mode, steps)
    opt = module.configure_optimizers()
    net, arch = module.supernet, module.space.reference()

    def step(batch):
        opt.zero_grad()
        losses = []
        for t in range(batch[0].shape[0]):
            learner = l2l_adapt(net, arch, batch[0][t], batch[1][t], steps, INNER_LR, mode == "second_order")
            losses.append(F.cross_entropy(learner(batch[2][t], arch), batch[3][t]))
        torch.stack(losses).mean().backward()
        opt.step()

    return step


def nchw_contender(mode: str, steps: int):
    """The project's step with the images left in NCHW layout (no channels-last)."""
    import lightning_metanas.maml as maml_module

    inner = project_contender(mode, steps)

    def step(batch):
        saved = maml_module.channels_last
        maml_module.channels_last = lambda x: x
        try:
            inner(batch)
        finally:
            maml_module.channels_last = saved

    return step


def sequential_contender(mode: str, steps: int):
    """The project's step with its tasks one after the other in the calling thread (torch's
    2 intra-op threads), instead of on 2 worker threads."""
    module = project_module(mode, steps)
    module.adapter.threads.workers = 1
    opt = module.configure_optimizers()

    def step(batch):
        opt.zero_grad()
        module.training_step(batch, 0).backward()
        opt.step()

    return step


def vmap_contender(mode: str, steps: int):
    """All tasks of the meta-batch in one vectorised inner loop: torch.func.vmap over
    grad(functional_call) with per-task fast weights (tasks share the architecture)."""
    from torch.func import functional_call, grad, vmap

    module = project_module(mode, steps)
    opt = module.configure_optimizers()
    net, arch = module.supernet, module.space.reference()
    used = dict(net.parameters_of(arch))

    def task_loss(params, x, y):
        return F.cross_entropy(functional_call(net, params, (x, arch)), y)

    first = vmap(grad(task_loss), in_dims=(None, 0, 0))
    later = vmap(grad(task_loss), in_dims=(0, 0, 0))
    query = vmap(task_loss, in_dims=(0, 0, 0))
    fo = mode == "first_order"

    def step(batch):
        opt.zero_grad()
        params = used
        for i in range(steps):
            g = (first if i == 0 else later)(params, batch[0], batch[1])
            params = {
                n: (p if i else p.unsqueeze(0)) - INNER_LR * (g[n].detach() if fo else g[n])
                for n, p in params.items()
            }
        query(params, batch[2], batch[3]).mean().backward()
        opt.step()

    return step


CONTENDERS = {
    "plain": plain_contender,
    "project": project_contender,
    "project-sequential": sequential_contender,
    "project-l2l-clone": l2l_clone_contender,
    "project-nchw": nchw_contender,
    "project-vmap": vmap_contender,
}
MODES = {
    "plain": ("first_order", "second_order"),
    "project": ("first_order", "second_order", "finite_difference"),
    "project-sequential": ("first_order", "second_order", "finite_difference"),
    "project-l2l-clone": ("first_order", "second_order"),
    "project-nchw": ("first_order", "second_order", "finite_difference"),
    "project-vmap": ("first_order", "second_order"),
}


# -- measurement (in subprocesses) ----------------------------------------------------------
def timed(configs, tasks, reps: int, budget_s: float) -> dict:
    """Every repetition runs every configuration once, on the same meta-batch; stops after
    ``reps`` repetitions, or after 3 once ``budget_s`` is spent (a loaded machine)."""
    steps_fn = {c: CONTENDERS[c[0]](c[1], c[2]) for c in configs}
    for c in configs:  # warm-up
        steps_fn[c](tasks[0])
    times: dict = {c: [] for c in configs}
    start = time.perf_counter()
    for r in range(reps):
        batch = tasks[(r + 1) % len(tasks)]
        for c in configs:
            t0 = time.perf_counter()
            steps_fn[c](batch)
            times[c].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return times


def vm_hwm_mb() -> float:
    """Peak RSS of this process image (``ru_maxrss`` also counts what a parent held when it
    started this process: Linux keeps it across execve)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def role_sample(args) -> None:
    tasks = sample_tasks(args.root, args.batches)
    torch.save(tasks, args.tasks)


def role_time(args) -> None:
    tasks = torch.load(args.tasks, weights_only=True)
    configs = [tuple(c.split(":")) for c in args.configs.split(",")]
    configs = [(c, m, int(k)) for c, m, k in configs]
    times = timed(configs, tasks, args.reps, args.budget)
    out = {"times": {":".join(map(str, c)): v for c, v in times.items()}}
    if args.agreement_tasks:
        out["agreement"] = {
            k: agreement(tasks, k, (1e-2, 1e-5), args.agreement_tasks) for k in args.steps
        }
    print(json.dumps(out))


def role_memory(args) -> None:
    """One configuration in a fresh process: setup, one step, peak RSS."""
    tasks = torch.load(args.tasks, weights_only=True)[:1]
    contender, mode, steps = args.configs.split(":")
    step = CONTENDERS[contender](mode, int(steps))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step(tasks[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"base_mb": base, "peak_mb": peak, "vm_hwm_mb": vm_hwm_mb()}))


def agreement(tasks, steps: int, epsilons, n_tasks: int) -> dict:
    """Cosine of each mode's meta-gradient to second-order's, on the first tasks."""
    module = project_module("second_order", steps)
    adapter, arch = module.adapter, module.space.reference()
    batch = tasks[0]
    modes = {"first_order": None, **{f"finite_difference@{e:g}": e for e in epsilons}}
    per_task: dict = {m: [] for m in modes}
    mean: dict = {m: 0 for m in ("second_order", *modes)}

    def flat(result):
        return torch.cat([g.flatten() for g in result.grads if g is not None])

    for t in range(n_tasks):
        support, query = (batch[0][t], batch[1][t]), (batch[2][t], batch[3][t])
        so = flat(adapter.meta_gradient(arch, support, query, steps, "second_order"))
        mean["second_order"] = mean["second_order"] + so
        for name, eps in modes.items():
            mode = "first_order" if eps is None else "finite_difference"
            g = flat(adapter.meta_gradient(arch, support, query, steps, mode, fd_epsilon=eps))
            per_task[name].append(F.cosine_similarity(g, so, dim=0).item())
            mean[name] = mean[name] + g
    return {
        name: {
            "median_task_cos": statistics.median(per_task[name]),
            "min_task_cos": min(per_task[name]),
            "mean_grad_cos": F.cosine_similarity(mean[name], mean["second_order"], dim=0).item(),
        }
        for name in modes
    }


# -- the parent ------------------------------------------------------------------------------
def run_role(role: str, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--tasks", args.tasks, "--root", args.root,
           "--batches", str(args.batches), "--reps", str(args.reps), "--budget", str(args.budget),
           "--agreement-tasks", str(extra.pop("agreement_tasks", 0)),
           "--steps", *map(str, args.steps)]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    env = dict(os.environ, META_STEP_BENCH_ROLE=role)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode:
        sys.exit(f"{role} subprocess failed:\n{out.stderr[-3000:]}")
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def machine() -> dict:
    model = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    torch_version = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"],
        capture_output=True, text=True,
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch_version,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data/omniglot", help="Omniglot folder")
    parser.add_argument("--batches", type=int, default=10, help="meta-batches sampled once")
    parser.add_argument("--reps", type=int, default=7, help="timed steps per configuration")
    parser.add_argument("--budget", type=float, default=150,
                        help="seconds of timing after which no new repetition starts (min 3)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5], help="inner steps")
    parser.add_argument("--variants", action="store_true", help="also time what was tried")
    parser.add_argument("--agreement-tasks", type=int, default=4,
                        help="tasks for the FD/FO vs second-order cosine (0: skip)")
    parser.add_argument("--tasks", help=argparse.SUPPRESS)
    parser.add_argument("--configs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not os.path.isabs(args.root):
        args.root = str(ROOT / args.root)

    role = os.environ.get("META_STEP_BENCH_ROLE")
    if role:
        warnings.filterwarnings("ignore", message=".*self.log.*")
        torch.set_num_threads(THREADS)
        return {"sample": role_sample, "time": role_time, "memory": role_memory}[role](args)

    started = time.perf_counter()
    load_before = os.getloadavg()
    contenders = list(CONTENDERS) if args.variants else ["plain", "project"]
    configs = [(c, m, k) for k in args.steps for c in contenders for m in MODES[c]]
    key = {c: ":".join(map(str, c)) for c in configs}
    phases = {}
    with tempfile.TemporaryDirectory() as tmp:
        args.tasks = str(Path(tmp) / "tasks.pt")
        t0 = time.perf_counter()
        run_role("sample", args)
        phases["sampling"] = time.perf_counter() - t0
        timing = run_role("time", args, configs=",".join(key.values()),
                          agreement_tasks=args.agreement_tasks)
        phases["timing + agreement"] = time.perf_counter() - t0 - sum(phases.values())
        memory = {  # the variants are about time: their memory is not measured
            c: run_role("memory", args, configs=key[c]) for c in configs
            if c[0] in ("plain", "project")
        }
        phases["memory"] = time.perf_counter() - t0 - sum(phases.values())
    load_after = os.getloadavg()

    times = {c: timing["times"][key[c]] for c in configs}
    rate = {c: META_BATCH / statistics.median(times[c]) for c in configs}
    reps = min(len(t) for t in times.values())
    print(f"machine: {json.dumps(machine())}, torch threads: {THREADS}")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    print(f"Omniglot {WAYS}-way {SHOTS}-shot, {QUERIES} query/class, meta-batch {META_BATCH}, "
          f"{args.batches} meta-batches, median of {reps} timed steps per configuration, "
          f"inner lr {INNER_LR}\n")
    print("| contender | mode | inner steps | tasks/s | ratio (b)/(a) | peak RSS MB "
          "| RSS before step MB |")
    print("|---|---|---:|---:|---|---:|---:|")
    for c in configs:
        contender, mode, k = c
        if contender == "plain":
            ratio = "(a)"
        elif mode == "finite_difference":
            ratio = (f"{rate[c] / rate[('plain', 'second_order', k)]:.2f} vs plain SO, "
                     f"{rate[c] / rate[('plain', 'first_order', k)]:.2f} vs plain FO")
        else:
            ratio = f"{rate[c] / rate[('plain', mode, k)]:.2f}"
        m = memory.get(c, {"peak_mb": float("nan"), "base_mb": float("nan"), "vm_hwm_mb": 0})
        print(f"| {contender} | {mode} | {k} | {rate[c]:.1f} | {ratio} | "
              f"{m['peak_mb']:.0f} | {m['base_mb']:.0f} |")
        if m["peak_mb"] > 1.05 * m["vm_hwm_mb"] and c in memory:
            print(f"  (warning: ru_maxrss {m['peak_mb']:.0f} MB > VmHWM {m['vm_hwm_mb']:.0f} MB)")

    if "agreement" in timing:
        print(f"\nAgreement with second_order meta-gradients (Conv-4 at initialisation, "
              f"float32, first {args.agreement_tasks} tasks of meta-batch 0):\n")
        print("| inner steps | mode | median task cosine | min task cosine "
              "| cosine of the mean gradient |")
        print("|---:|---|---:|---:|---:|")
        for k, rows in timing["agreement"].items():
            for name, r in rows.items():
                print(f"| {k} | {name} | {r['median_task_cos']:.3f} | {r['min_task_cos']:.3f} "
                      f"| {r['mean_grad_cos']:.3f} |")
    print(f"\ntotal bench time: {time.perf_counter() - started:.0f} s ("
          + ", ".join(f"{name} {t:.0f} s" for name, t in phases.items()) + ")")


if __name__ == "__main__":
    main()
