"""Meta-train step: this project's ``MetaNASModule.training_step`` (task by task, and
vectorised) vs a plain learn2learn loop, on CPU or on a CUDA GPU.

    .venv/bin/python bench/meta_step.py                  # CPU: the tables in BENCHMARKS.md
    .venv/bin/python bench/meta_step.py --device cuda    # on a GPU (bench/device_check.sh runs it)
    .venv/bin/python bench/meta_step.py --variants       # plus the alternatives that were tried

Contenders, on the same Omniglot tasks (1 shot and 1 query per class, as learn2learn's
``examples/vision/maml_omniglot.py``; ``--ways 5 20``), meta-batch 32, 1 and 5 inner steps:

(a) ``plain``: the loop learn2learn's example writes by hand: a Conv-4 ``nn.Sequential``
    (as ``l2l.vision.models.OmniglotCNN``: conv3x3 -> BatchNorm2d -> ReLU -> MaxPool2d(2), x4,
    mean over space, linear head; BatchNorm with ``track_running_stats=False`` and convs
    without bias, to be the same network as the project's Conv-4 path), wrapped in
    ``l2l.algorithms.MAML(model, lr, first_order=...)``; per task ``clone()``, ``adapt()``
    per inner step, query loss, ``backward()``; then gradients / 32 and ``Adam.step()``.
    The example's per-iteration meta-validation task is left out (it is not part of a step).
(b) ``project``: ``MetaNASModule(train_arch="reference")`` (the default search space's
    SuperNet, Conv-4 path fixed), ``training_step`` + ``backward()`` + ``Adam.step()``, as
    Lightning's automatic optimisation runs it, in each ``meta_gradient`` mode, its tasks one
    at a time (``meta.vectorize=false``: on 2 worker threads on CPU, one after the other on
    CUDA).
(c) ``project-vectorized``: the same with ``meta.vectorize=true``: the 32 tasks share Conv-4,
    so they run as one vmap'd stack (the CUDA default).

Task sampling is outside the timed region: one subprocess draws the meta-batches once and
saves them; every other subprocess loads the same file (and moves it to the device untimed).
Timing: all configurations in one subprocess, interleaved (every repetition runs every
configuration on the same meta-batch), after a warm-up step; the median per-step time is
reported (at most ``--reps`` repetitions; after 3, none starts once ``--budget`` seconds are
spent, which keeps a run on a loaded machine under a few minutes). On CUDA each step is
timed between two ``torch.cuda.synchronize()``.
Peak memory. CPU: one fresh subprocess per configuration loads the tasks, builds the
contender, runs one step and reports ``ru_maxrss`` (``before step``: its value before the
step). The parent process imports no torch, so the ``ru_maxrss`` its children inherit across
``execve`` is smaller than their own (checked against ``VmHWM``). CUDA: after the timing, each
configuration alone (the others freed) is built, and one step runs between
``torch.cuda.reset_peak_memory_stats()`` and ``torch.cuda.max_memory_allocated()``
(``before step``: ``torch.cuda.memory_allocated()`` then: weights, optimiser state, tasks).
torch uses 2 threads in every subprocess (``torch.set_num_threads(2)``); on CPU the project's
per-task step spreads its tasks over 2 worker threads with 1 intra-op thread each.
Agreement: each mode's meta-gradient against second order's (cosine), Conv-4 at
initialisation, float32; on CUDA also with TF32 on, finite differences with and without their
IEEE-float32 scope (``lightning_metanas/precision.py``), second order computed in IEEE float32.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
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

SHOTS, QUERIES = 1, 1
INNER_LR, META_LR = 0.4, 0.003
THREADS = 2
META_BATCH = 32  # --meta-batch
DEVICE = "cpu"  # --device


# -- tasks ---------------------------------------------------------------------------------
def sample_tasks(root: str, ways: int, batches: int, seed: int = 0) -> list:
    from lightning_metanas.data import EpisodicDataModule

    dm = EpisodicDataModule(
        dataset="omniglot", root=root, ways=ways, shots=SHOTS, queries=QUERIES,
        meta_batch_size=META_BATCH, train_batches=batches, seed=seed,
    )
    dm.setup("fit")
    out = []
    for batch in dm.train_dataloader():
        out.append(tuple(t.contiguous() for t in batch))
        if len(out) == batches:
            break
    return out


def load_tasks(args, ways: int) -> list:
    tasks = torch.load(Path(args.tasks) / f"tasks_{ways}.pt", weights_only=True)
    return [tuple(t.to(DEVICE) for t in batch) for batch in tasks]


# -- (a) the plain learn2learn loop ---------------------------------------------------------
def conv4(ways: int) -> "nn.Module":
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


def plain_contender(mode: str, steps: int, ways: int):
    import learn2learn as l2l

    torch.manual_seed(0)
    model = conv4(ways).to(DEVICE)
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


# -- (b), (c) this project's step ------------------------------------------------------------
def project_module(mode: str, steps: int, ways: int, **meta):
    from lightning_metanas.meta_config import MetaConfig
    from lightning_metanas.module import MetaNASModule

    torch.manual_seed(0)
    config = MetaConfig(inner_lr=INNER_LR, inner_steps=steps, meta_lr=META_LR, meta_gradient=mode, **meta)
    return MetaNASModule(ways=ways, image_size=28, meta=config, train_arch="reference").to(DEVICE)


def module_step(module):
    opt = module.configure_optimizers()
    step_index = [0]

    def step(batch):
        opt.zero_grad()
        loss = module.training_step(batch, step_index[0])  # self.log: no Trainer, returns
        loss.backward()
        opt.step()
        step_index[0] += 1

    return step


def project_contender(mode: str, steps: int, ways: int):
    return module_step(project_module(mode, steps, ways, vectorize=False))


def vectorized_contender(mode: str, steps: int, ways: int):
    return module_step(project_module(mode, steps, ways, vectorize=True))


# -- variants that were tried (--variants, or by name in --contenders) ------------------------
def l2l_clone_contender(mode: str, steps: int, ways: int):
    """The project's step before the functional path: learn2learn clone()/adapt() of the
    whole SuperNet per task, one backward through all task graphs."""
    from bench.l2l_reference import l2l_adapt

    module = project_module(mode, steps, ways, vectorize=False)
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


def nchw_contender(mode: str, steps: int, ways: int):
    """The project's per-task step with the images left in NCHW layout (no channels-last)."""
    return module_step(project_module(mode, steps, ways, vectorize=False, channels_last=False))


def channels_last_contender(mode: str, steps: int, ways: int):
    """The project's per-task step with channels-last images (the CPU default; on CUDA the
    comparison that decides the default there)."""
    return module_step(project_module(mode, steps, ways, vectorize=False, channels_last=True))


def sequential_contender(mode: str, steps: int, ways: int):
    """The project's step with its tasks one after the other in the calling thread (torch's
    2 intra-op threads), instead of on 2 worker threads."""
    return module_step(project_module(mode, steps, ways, vectorize=False, workers=1))


def support_contender(mode: str, steps: int, ways: int):
    """The project's per-task step with each query image normalised by the support images'
    statistics (``meta.norm=support``, BatchNorm)."""
    return module_step(project_module(mode, steps, ways, vectorize=False, norm="support"))


def task_norm_contender(mode: str, steps: int, ways: int):
    """The same with TaskNorm-I layers (``meta.norm_layer=task_norm_i``): what blending in each
    image's own statistics costs against ``project-support``."""
    return module_step(project_module(mode, steps, ways, vectorize=False, norm="support", norm_layer="task_norm_i"))


CONTENDERS = {
    "plain": plain_contender,
    "project": project_contender,
    "project-vectorized": vectorized_contender,
    "project-sequential": sequential_contender,
    "project-l2l-clone": l2l_clone_contender,
    "project-nchw": nchw_contender,
    "project-channels-last": channels_last_contender,
    "project-support": support_contender,
    "project-task-norm": task_norm_contender,
}
ALL_MODES = ("first_order", "second_order", "finite_difference")
MODES = {name: ALL_MODES for name in CONTENDERS} | {
    "plain": ("first_order", "second_order"),
    "project-l2l-clone": ("first_order", "second_order"),
}
DEFAULT_CONTENDERS = ("plain", "project", "project-vectorized")


# -- measurement (in subprocesses) ----------------------------------------------------------
def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def build(config):
    contender, mode, steps, ways = config
    return CONTENDERS[contender](mode, steps, ways)


def timed(configs, tasks, reps: int, budget_s: float) -> dict:
    """Every repetition runs every configuration once, on the same meta-batch; stops after
    ``reps`` repetitions, or after 3 once ``budget_s`` is spent (a loaded machine)."""
    steps_fn = {c: build(c) for c in configs}
    for c in configs:  # warm-up
        steps_fn[c](tasks[c[3]][0])
    synchronize()
    times: dict = {c: [] for c in configs}
    start = time.perf_counter()
    for r in range(reps):
        for c in configs:
            batch = tasks[c[3]][(r + 1) % len(tasks[c[3]])]
            synchronize()
            t0 = time.perf_counter()
            steps_fn[c](batch)
            synchronize()
            times[c].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return times


def cuda_memory(configs, tasks) -> dict:
    """Per configuration, built alone: allocated MB before its step and at the step's peak."""
    out = {}
    for c in configs:
        gc.collect()
        torch.cuda.empty_cache()
        step = build(c)
        synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
        step(tasks[c[3]][0])
        synchronize()
        out[key(c)] = {"base_mb": base, "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
        del step
    return out


def vm_hwm_mb() -> float:
    """Peak RSS of this process image (``ru_maxrss`` also counts what a parent held when it
    started this process: Linux keeps it across execve)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def key(config) -> str:
    return ":".join(map(str, config))


def parse_configs(text: str) -> list:
    configs = [tuple(c.split(":")) for c in text.split(",")]
    return [(c, m, int(k), int(w)) for c, m, k, w in configs]


def role_sample(args) -> None:
    for ways in args.ways:
        torch.save(sample_tasks(args.root, ways, args.batches), Path(args.tasks) / f"tasks_{ways}.pt")


def role_time(args) -> None:
    configs = parse_configs(args.configs)
    tasks = {ways: load_tasks(args, ways) for ways in args.ways}
    times = timed(configs, tasks, args.reps, args.budget)
    out = {"times": {key(c): v for c, v in times.items()}}
    if DEVICE == "cuda":
        gc.collect()
        out["memory"] = cuda_memory(configs, tasks)
        out["gpu"] = torch.cuda.get_device_name()
    if args.agreement_tasks:
        ways = args.ways[0]
        out["agreement"] = {
            k: agreement(tasks[ways], k, ways, (1e-2, 1e-5), args.agreement_tasks) for k in args.steps
        }
    print(json.dumps(out))


def role_memory(args) -> None:
    """One configuration in a fresh process: setup, one step, peak RSS (CPU)."""
    config = parse_configs(args.configs)[0]
    batch = load_tasks(args, config[3])[0]
    step = build(config)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step(batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"base_mb": base, "peak_mb": peak, "vm_hwm_mb": vm_hwm_mb()}))


@contextlib.contextmanager
def tf32_on():
    """TF32 convolutions and matrix products, as a user who enabled them would have."""
    from lightning_metanas import precision

    saved = precision.tf32_settings()
    precision.set_tf32_settings(precision.TF32)
    try:
        yield
    finally:
        precision.set_tf32_settings(saved)


@contextlib.contextmanager
def without_fd_fix(adapter):
    """Finite differences without their IEEE-float32 scope (as they ran before it existed)."""
    adapter.ieee_finite_differences = False
    try:
        yield
    finally:
        adapter.ieee_finite_differences = True


def agreement(tasks, steps: int, ways: int, epsilons, n_tasks: int) -> dict:
    """Cosine of each mode's meta-gradient to second order's (in IEEE float32), on the first
    tasks; on CUDA also with TF32 on, finite differences with and without their fix."""
    from lightning_metanas.precision import ieee_float32

    module = project_module("second_order", steps, ways, vectorize=False)
    adapter, arch = module.adapter, module.space.reference()
    batch = tasks[0]
    rows = {"first_order": ("first_order", None, None)}
    rows |= {f"finite_difference@{e:g}": ("finite_difference", e, None) for e in epsilons}
    if DEVICE == "cuda":
        rows["second_order, TF32 on"] = ("second_order", None, "fixed")
        rows["finite_difference@1e-05, TF32 on, IEEE FD passes (the fix)"] = ("finite_difference", 1e-5, "fixed")
        rows["finite_difference@1e-05, TF32 on, TF32 FD passes (before)"] = ("finite_difference", 1e-5, "unfixed")
    per_task: dict = {name: [] for name in rows}
    mean: dict = {name: 0 for name in ("second_order", *rows)}

    def flat(result):
        return torch.cat([g.flatten() for g in result.grads if g is not None])

    for t in range(n_tasks):
        support, query = (batch[0][t], batch[1][t]), (batch[2][t], batch[3][t])
        with ieee_float32():
            so = flat(adapter.meta_gradient(arch, support, query, steps, "second_order"))
        mean["second_order"] = mean["second_order"] + so
        for name, (mode, eps, tf32) in rows.items():
            with (tf32_on() if tf32 else contextlib.nullcontext()), \
                    (without_fd_fix(adapter) if tf32 == "unfixed" else contextlib.nullcontext()):
                g = flat(adapter.meta_gradient(arch, support, query, steps, mode, fd_epsilon=eps))
            per_task[name].append(F.cosine_similarity(g, so, dim=0).item())
            mean[name] = mean[name] + g
    return {
        name: {
            "median_task_cos": statistics.median(per_task[name]),
            "min_task_cos": min(per_task[name]),
            "mean_grad_cos": F.cosine_similarity(mean[name], mean["second_order"], dim=0).item(),
        }
        for name in rows
    }


# -- the parent ------------------------------------------------------------------------------
def run_role(role: str, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--tasks", args.tasks, "--root", args.root,
           "--batches", str(args.batches), "--reps", str(args.reps), "--budget", str(args.budget),
           "--agreement-tasks", str(extra.pop("agreement_tasks", 0)), "--device", args.device,
           "--meta-batch", str(args.meta_batch),
           "--steps", *map(str, args.steps), "--ways", *map(str, args.ways)]
    for name, value in extra.items():
        cmd += [f"--{name}", str(value)]
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


def ratio_text(rate, c) -> str:
    contender, mode, k, w = c
    if contender == "plain":
        return "(a)"
    plain = {m: rate.get(("plain", m, k, w)) for m in ("first_order", "second_order")}
    if mode == "finite_difference":
        if plain["second_order"] and plain["first_order"]:
            return (f"{rate[c] / plain['second_order']:.2f} vs plain SO, "
                    f"{rate[c] / plain['first_order']:.2f} vs plain FO")
        return "-"
    return f"{rate[c] / plain[mode]:.2f}" if plain[mode] else "-"


def main() -> None:
    global DEVICE, META_BATCH
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data/omniglot", help="Omniglot folder")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the steps run")
    parser.add_argument("--ways", type=int, nargs="+", default=[5, 20], help="ways of the tasks (1 shot)")
    parser.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-batch")
    parser.add_argument("--batches", type=int, default=10, help="meta-batches sampled once")
    parser.add_argument("--reps", type=int, default=7, help="timed steps per configuration")
    parser.add_argument("--budget", type=float, default=150,
                        help="seconds of timing after which no new repetition starts (min 3)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5], help="inner steps")
    parser.add_argument("--contenders", nargs="+", default=list(DEFAULT_CONTENDERS),
                        choices=list(CONTENDERS), help="what to time")
    parser.add_argument("--variants", action="store_true", help="also time what was tried")
    parser.add_argument("--agreement-tasks", type=int, default=4,
                        help="tasks for the FD/FO vs second-order cosine, on the first --ways (0: skip)")
    parser.add_argument("--json", help="also write every measurement to this JSON file")
    parser.add_argument("--tasks", help=argparse.SUPPRESS)
    parser.add_argument("--configs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not os.path.isabs(args.root):
        args.root = str(ROOT / args.root)
    DEVICE, META_BATCH = args.device, args.meta_batch

    role = os.environ.get("META_STEP_BENCH_ROLE")
    if role:
        warnings.filterwarnings("ignore", message=".*self.log.*")
        torch.set_num_threads(THREADS)
        if DEVICE == "cuda" and not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA device")
        return {"sample": role_sample, "time": role_time, "memory": role_memory}[role](args)

    started = time.perf_counter()
    load_before = os.getloadavg()
    contenders = list(dict.fromkeys(args.contenders + (list(CONTENDERS) if args.variants else [])))
    if args.device == "cuda":  # no worker threads on CUDA: sequential is the per-task step
        contenders = [c for c in contenders if c != "project-sequential"]
    configs = [(c, m, k, w) for w in args.ways for k in args.steps for c in contenders for m in MODES[c]]
    phases = {}
    with tempfile.TemporaryDirectory() as tmp:
        args.tasks = tmp
        t0 = time.perf_counter()
        run_role("sample", args)
        phases["sampling"] = time.perf_counter() - t0
        timing = run_role("time", args, configs=",".join(map(key, configs)),
                          agreement_tasks=args.agreement_tasks)
        phases["timing + agreement"] = time.perf_counter() - t0 - sum(phases.values())
        if args.device == "cuda":
            memory = timing["memory"]
        else:  # the variants are about time: their memory is not measured
            memory = {key(c): run_role("memory", args, configs=key(c)) for c in configs
                      if c[0] in DEFAULT_CONTENDERS}
            phases["memory"] = time.perf_counter() - t0 - sum(phases.values())
    load_after = os.getloadavg()

    times = {c: timing["times"][key(c)] for c in configs}
    rate = {c: args.meta_batch / statistics.median(times[c]) for c in configs}
    reps = min(len(t) for t in times.values())
    memory_kind = "peak GPU allocated MB | allocated before step MB" if args.device == "cuda" \
        else "peak RSS MB | RSS before step MB"
    print(f"machine: {json.dumps(machine())}, torch threads: {THREADS}, device: {args.device}"
          + (f" ({timing.get('gpu')})" if args.device == "cuda" else ""))
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    print(f"Omniglot {'/'.join(map(str, args.ways))}-way {SHOTS}-shot, {QUERIES} query/class, "
          f"meta-batch {args.meta_batch}, {args.batches} meta-batches, median of {reps} timed steps "
          f"per configuration, inner lr {INNER_LR}\n")
    print(f"| ways | contender | mode | inner steps | tasks/s | ratio to (a) | {memory_kind} |")
    print("|---:|---|---|---:|---:|---|---:|---:|")
    for c in configs:
        contender, mode, k, w = c
        m = memory.get(key(c), {"peak_mb": float("nan"), "base_mb": float("nan")})
        print(f"| {w} | {contender} | {mode} | {k} | {rate[c]:.1f} | {ratio_text(rate, c)} | "
              f"{m['peak_mb']:.0f} | {m['base_mb']:.0f} |")
        if "vm_hwm_mb" in m and m["peak_mb"] > 1.05 * m["vm_hwm_mb"]:
            print(f"  (warning: ru_maxrss {m['peak_mb']:.0f} MB > VmHWM {m['vm_hwm_mb']:.0f} MB)")

    if "agreement" in timing:
        print(f"\nAgreement with second_order meta-gradients (Conv-4 at initialisation, "
              f"float32, {args.ways[0]}-way, first {args.agreement_tasks} tasks of meta-batch 0):\n")
        print("| inner steps | mode | median task cosine | min task cosine "
              "| cosine of the mean gradient |")
        print("|---:|---|---:|---:|---:|")
        for k, rows in timing["agreement"].items():
            for name, r in rows.items():
                print(f"| {k} | {name} | {r['median_task_cos']:.3f} | {r['min_task_cos']:.3f} "
                      f"| {r['mean_grad_cos']:.3f} |")
    print(f"\ntotal bench time: {time.perf_counter() - started:.0f} s ("
          + ", ".join(f"{name} {t:.0f} s" for name, t in phases.items()) + ")")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "device": args.device, "gpu": timing.get("gpu"),
            "load": [load_before[0], load_after[0]], "meta_batch": args.meta_batch,
            "rows": [{"ways": c[3], "contender": c[0], "mode": c[1], "inner_steps": c[2],
                      "tasks_per_s": rate[c], "times_s": times[c], **memory.get(key(c), {})} for c in configs],
            "agreement": timing.get("agreement"),
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
