"""Reliability, as a user meets it (RELIABILITY.md lists every case with what the user sees):

* a bad setting or input file fails at once, before data loading or training, with one line
  ``error: ...`` naming the setting and what is allowed, and no traceback;
* a NaN/inf meta-loss stops the run before the optimiser steps on it, keeping the last good
  checkpoint;
* a search killed mid-epoch (SIGTERM, SIGKILL) and resumed with ``--ckpt_path=last`` ends with
  every generation exactly once, equal to an uninterrupted run;
* the same seed gives the same search;
* a checkpoint that would run code when unpickled is refused, and nothing in it runs.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning.callbacks import Callback

from tests.test_train import ROOT, SEARCH, SYNTHETIC, logs, run

# train.cli_main(args) in-process: LightningCLI warns that pytest's own argv is also there
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
ARCH_FILES = {  # kind -> (file content, words the message must hold)
    "malformed": ('{"ops": ["conv3x3", "conv3x3"], "widths": [8, ', ["not valid JSON"]),
    "not_an_object": ('["conv3x3", 8]', ["JSON object", "'ops'", "'widths'"]),
    "unknown_op": ('{"ops": ["conv3x3", "conv9x9"], "widths": [8, 8]}',
                   ["ops[1] = 'conv9x9'", "allowed: ['conv3x3'"]),
    "width_out_of_range": ('{"ops": ["conv3x3", "conv3x3"], "widths": [8, 64]}',
                           ["widths[1] = 64", "allowed: [8, 16]"]),
    "wrong_depth": ('{"ops": ["conv3x3"], "widths": [8]}', ["1 layers", "allowed depths: [2, 3]"]),
    "ops_widths_differ": ('{"ops": ["conv3x3", "conv3x3"], "widths": [8]}', ["2 ops but 1 widths"]),
    "unknown_field": ('{"ops": ["conv3x3", "conv3x3"], "widths": [8, 8], "__reduce__": "os.system"}',
                      ["unknown field(s) ['__reduce__']", "allowed: 'ops', 'widths'"]),
}


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The run failed with ``error: ...`` as its last stderr line, holding every needle, and
    printed no traceback; returns that line."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return _error_line(proc.stderr, needles)


def _error_line(stderr: str, needles) -> str:
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), stderr[-3000:]
    for needle in needles:
        assert needle in line, line
    return line


def train_in_process(capsys, *args: str) -> str:
    """``train.py``'s command line (``train.cli_main``, what ``python train.py`` runs) in
    this process, to spare a ~4 s interpreter start per case; it must return exit status 1
    after printing one ``error:`` line, not raise. Returns that stderr."""
    import train

    capsys.readouterr()
    status = train.cli_main(list(args))
    err = capsys.readouterr().err
    assert status == 1, err[-3000:]
    return err


def eval_in_process(*args: str) -> str:
    """``eval.py``'s ``main``; returns the message of the ``SettingsError`` its command line
    prints as ``error: <message>``."""
    import importlib

    from lightning_metanas.errors import SettingsError

    with pytest.raises(SettingsError) as err:
        importlib.import_module("eval").main(list(args))
    return f"error: {err.value}"


def no_run_started(tmp_path: Path) -> None:
    """Nothing was trained or logged: the error came before fit."""
    assert not list(tmp_path.rglob("metrics.csv")) and not list(tmp_path.rglob("*.ckpt"))


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "checkpoints" / "search_history.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# ---------------------------------------------------------------------------------------
# settings, checked up front through train.py
# ---------------------------------------------------------------------------------------
BAD_SETTINGS = [
    # (id, arguments after SYNTHETIC, what the one line must say)
    ("ways_more_than_classes", ["--data.ways=13"],
     ["data.ways=13", "12 classes of the synthetic val split", "use data.ways <= 12"]),
    ("ways_more_than_omniglot_classes", ["--data.dataset=omniglot", "--data.ways=101"],
     ["data.ways=101", "100 classes of the Omniglot val split", "use data.ways <= 100"]),
    ("shots_plus_queries_more_than_drawings", ["--data.shots=10", "--data.queries=11"],
     ["every synthetic class has 20 images", "data.shots + data.queries = 10 + 11 = 21"]),
    ("unknown_operation", ["--model.search_space.ops=[conv3x3,conv9x9]"],
     ["unknown operation(s) ['conv9x9']", "conv3x3"]),
    ("inner_lr_zero", ["--model.meta.inner_lr=0"], ["model.meta.inner_lr must be a finite number > 0"]),
    ("meta_lr_negative", ["--model.meta.meta_lr=-0.1"], ["model.meta.meta_lr must be a finite number > 0"]),
    ("fd_epsilon_zero", ["--model.meta.fd_epsilon=0"], ["model.meta.fd_epsilon must be a finite number > 0"]),
    ("inner_steps_zero", ["--model.meta.inner_steps=0"], ["model.meta.inner_steps must be an integer >= 1"]),
    ("eval_inner_steps_negative", ["--model.meta.eval_inner_steps=-1"],
     ["model.meta.eval_inner_steps must be an integer >= 1"]),
    ("train_batches_zero", ["--data.train_batches=0"], ["data.train_batches must be an integer >= 1, got 0"]),
    ("population_too_small", [*SEARCH, "--search.population_size=1"],
     ["search.population_size must be an integer >= 2, got 1"]),
    ("tournament_larger_than_population",
     [*SEARCH, "--search.tournament_size=5"],
     ["search.tournament_size must be between 2 and population_size (4), got 5"]),
    ("pool_smaller_than_offspring", [*SEARCH, "--search.pool_size=1"],
     ["search.pool_size (1) must be >= offspring (2)"]),
    ("data_root_missing", ["--data.dataset=omniglot", "--data.root=/no/such/dir"],
     ["Omniglot directory not found: /no/such/dir", "--data.root"]),
    ("ckpt_path_missing", ["--ckpt_path=/no/such/last.ckpt"],
     ["--ckpt_path /no/such/last.ckpt: no such file", "'last'"]),
    ("ckpt_path_last_without_a_run", ["--ckpt_path=last"],
     ["--ckpt_path=last: no last.ckpt in", "run without --ckpt_path to start"]),
]


@pytest.mark.parametrize("args, needles", [c[1:] for c in BAD_SETTINGS], ids=[c[0] for c in BAD_SETTINGS])
def test_bad_setting_fails_up_front_with_one_line(tmp_path, capsys, args, needles):
    _error_line(train_in_process(capsys, *SYNTHETIC, *logs(tmp_path, "bad"), *args), needles)
    no_run_started(tmp_path)


def test_bad_setting_through_the_real_command_line(tmp_path):
    """The same, as a user runs it: the setting is in the search's nested dataclass, where
    jsonargparse wraps the error; still one line, status 1, no traceback."""
    args = [*SEARCH, "--search.population_size=1"]
    proc = run("train.py", *SYNTHETIC, *logs(tmp_path, "bad"), *args, check=False)
    one_line_error(proc, "search.population_size must be an integer >= 2, got 1")
    assert proc.returncode == 1
    no_run_started(tmp_path)


def test_type_errors_are_usage_errors(tmp_path, capsys):
    """jsonargparse checks types before anything is built: a usage message, exit status 2."""
    import train

    with pytest.raises(SystemExit) as exit_:
        train.cli_main([*SYNTHETIC, *logs(tmp_path, "bad"), "--data.ways=abc"])
    assert exit_.value.code == 2
    assert 'Parser key "data.ways"' in capsys.readouterr().err
    no_run_started(tmp_path)


@pytest.mark.parametrize("kind", sorted(ARCH_FILES))
@pytest.mark.parametrize("flag", ["--model.eval_arch", "--model.train_arch"])
def test_bad_architecture_json_through_train_py(tmp_path, capsys, kind, flag):
    text, needles = ARCH_FILES[kind]
    path = tmp_path / f"{kind}.json"
    path.write_text(text)
    _error_line(train_in_process(capsys, *SYNTHETIC, *logs(tmp_path, "bad"), f"{flag}={path}"), needles)
    no_run_started(tmp_path)


# ---------------------------------------------------------------------------------------
# a small trained checkpoint, for eval.py and resume checks
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small")
    run("train.py", *SYNTHETIC, *logs(out, "small"), "--trainer.max_epochs=1", "--test=false")
    return out / "small" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("kind", sorted(ARCH_FILES))
def test_bad_architecture_json_through_eval_py(tmp_path, small_checkpoint, kind):
    text, needles = ARCH_FILES[kind]
    path = tmp_path / f"{kind}.json"
    path.write_text(text)
    line = eval_in_process("--ckpt_path", str(small_checkpoint), "--model.eval_arch", str(path), "--data.test_tasks", "3")
    _error_line(line, needles)


def test_resume_with_other_search_space_is_refused_up_front(tmp_path, capsys, small_checkpoint):
    err = train_in_process(capsys, *SYNTHETIC, *logs(tmp_path, "other"),
                           "--model.search_space.widths=[8,32]", f"--ckpt_path={small_checkpoint}")
    _error_line(err, [f"--ckpt_path {small_checkpoint} was written with model.search_space=",
                      "resume with the run's settings (--config "])
    no_run_started(tmp_path)


def test_resume_from_a_weights_only_or_truncated_file_is_refused(tmp_path, capsys, small_checkpoint):
    weights = tmp_path / "weights.ckpt"
    torch.save({"state_dict": state_dict(small_checkpoint)}, weights)
    err = train_in_process(capsys, *SYNTHETIC, *logs(tmp_path, "w"), f"--ckpt_path={weights}")
    _error_line(err, ["is not a training checkpoint (no optimizer_states, loops)"])
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(small_checkpoint.read_bytes()[:5000])
    err = train_in_process(capsys, *SYNTHETIC, *logs(tmp_path, "t"), f"--ckpt_path={truncated}")
    _error_line(err, ["truncated, damaged or not a torch checkpoint"])
    no_run_started(tmp_path / "w")
    no_run_started(tmp_path / "t")


# ---------------------------------------------------------------------------------------
# untrusted files
# ---------------------------------------------------------------------------------------
class _WritesAFile:
    """Unpickling this calls ``open(marker, "w")``: stands for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_checkpoint(path: Path, marker: Path, template: Path) -> Path:
    checkpoint = torch.load(template, map_location="cpu", weights_only=True)
    checkpoint["payload"] = _WritesAFile(marker)
    torch.save(checkpoint, path)
    return path


def test_malicious_payload_is_real(tmp_path, small_checkpoint):
    """The payload does run code under a plain (unsafe) unpickler, so the refusals below mean
    something."""
    marker = tmp_path / "ran"
    path = _malicious_checkpoint(tmp_path / "evil.ckpt", marker, small_checkpoint)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_checkpoint_that_runs_code_is_refused_by_train_and_eval(tmp_path, small_checkpoint):
    marker = tmp_path / "ran"
    evil = _malicious_checkpoint(tmp_path / "evil.ckpt", marker, small_checkpoint)
    proc = run("train.py", *SYNTHETIC, *logs(tmp_path, "evil"), f"--ckpt_path={evil}", check=False)
    one_line_error(proc, f"--ckpt_path {evil} cannot be loaded with torch.load(weights_only=True)",
                   "nothing in it was executed")
    proc = run("eval.py", "--ckpt_path", str(evil), "--data.test_tasks", "3", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "weights_only=True" in proc.stderr and "io.open" in proc.stderr
    assert not marker.exists()
    no_run_started(tmp_path / "evil")


# ---------------------------------------------------------------------------------------
# numerical faults
# ---------------------------------------------------------------------------------------
class PoisonBatch(Callback):
    """Test-only: turns the support images of one training batch into NaN, and reports (to
    ``out``) whether the weights changed after that batch began and the bytes of ``last.ckpt``
    at that moment."""

    def __init__(self, epoch: int = 1, batch: int = 1, out: str = "poison.json") -> None:
        self.epoch, self.batch, self.out = epoch, batch, out
        self.before: dict[str, torch.Tensor] = {}
        self.report: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        batch[0].fill_(float("nan"))
        self.before = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.report["global_step"] = trainer.global_step
        if trainer.checkpoint_callback is not None:
            last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
            self.report["last_ckpt_sha256"] = sha256(last) if last.exists() else None

    def on_exception(self, trainer, pl_module, exception) -> None:
        after = pl_module.state_dict()
        self.report.update(
            exception=type(exception).__name__,
            weights_unchanged=bool(self.before) and all(torch.equal(v, after[k]) for k, v in self.before.items()),
            weights_finite=all(bool(torch.isfinite(v).all()) for v in after.values() if v.is_floating_point()),
        )
        Path(self.out).write_text(json.dumps(self.report))


def test_nan_meta_loss_stops_before_the_step_and_keeps_last_checkpoint(tmp_path):
    out = tmp_path / "poison.json"
    proc = run("train.py", *SYNTHETIC, *logs(tmp_path, "nan"), "--trainer.max_epochs=3", "--test=false",
               "--trainer.callbacks+=tests.test_reliability.PoisonBatch",
               "--trainer.callbacks.epoch=1", "--trainer.callbacks.batch=1",
               f"--trainer.callbacks.out={out}", check=False)
    ckpt_dir = tmp_path / "nan" / "version_0" / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    one_line_error(proc, "the meta-loss is not finite (nan) at global step 4 (epoch 1, batch 1)",
                   f"architectures of that step: {_architectures_of_step(4)}; the optimiser step was not taken",
                   f"last good checkpoint: {last}")
    assert proc.returncode == 1
    report = json.loads(out.read_text())
    assert report["exception"] == "NonFiniteLossError" and report["global_step"] == 4
    assert report["weights_unchanged"] and report["weights_finite"]  # no step was taken
    assert sha256(last) == report["last_ckpt_sha256"]  # last.ckpt: the bytes of epoch 0's
    for path in ckpt_dir.glob("*.ckpt"):  # and nothing written after the fault
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 3), path
        assert all(bool(torch.isfinite(t).all()) for t in checkpoint["state_dict"].values()
                   if t.is_floating_point())


def test_diverging_inner_loop_is_caught_at_its_first_step(tmp_path, capsys):
    err = train_in_process(capsys, *SYNTHETIC, *logs(tmp_path, "lr"), "--model.meta.inner_lr=1e30",
                           "--trainer.max_epochs=1")
    _error_line(err, ["the meta-loss is not finite (nan) at global step 0 (epoch 0, batch 0)",
                      "last good checkpoint: none (no epoch had ended)"])
    assert not list(tmp_path.rglob("*.ckpt"))


def _fake_trainer(**kwargs):
    return SimpleNamespace(world_size=1, global_step=7, current_epoch=2,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_idx=1)), **kwargs)


def _architectures_of_step(step: int, tasks: int = 4, seed: int = 0) -> str:
    """What the guard must name for a step of a synthetic run (the module's default sampling
    rule, ``fair``, over the SYNTHETIC space, rank 0): drawn here the way
    MetaNASModule.step_rng documents it, each distinct one once with its count."""
    import inspect
    import random

    from lightning_metanas.module import MetaNASModule
    from lightning_metanas.samplers import draw
    from lightning_metanas.search_space import SearchSpace

    rule = inspect.signature(MetaNASModule).parameters["sampling"].default
    assert rule == "fair"  # what train.py and the module use unless told otherwise
    rng = random.Random(f"{seed}/0/{step}")
    archs = [str(a) for a in draw(SearchSpace(widths=(8, 16), depths=(2, 3)), rng, tasks, rule)]
    return ", ".join(f"{a} (x{archs.count(a)})" if archs.count(a) > 1 else a for a in dict.fromkeys(archs))


class InfiniteGradient(Callback):
    """Test-only: after the backward of the first step, one gradient entry becomes inf (the
    meta-loss stays finite)."""

    def on_after_backward(self, trainer, pl_module) -> None:
        next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")


@pytest.mark.parametrize("fault", ["nan_images", "inf_gradient"])
def test_guard_names_the_architectures_of_a_real_step(tmp_path, fault):
    """A real training step of MetaNASModule with a NaN batch (or an infinite gradient): the
    guard stops before the optimiser step and names the step's architectures, as the module
    recorded them."""
    import pytorch_lightning as pl

    from callbacks.guards import FiniteLossGuard, NonFiniteLossError
    from lightning_metanas.data import EpisodicDataModule
    from lightning_metanas.module import MetaNASModule
    from lightning_metanas.search_space import SearchSpace

    data = EpisodicDataModule(dataset="synthetic", image_size=14, ways=3, queries=2, meta_batch_size=4,
                              train_batches=3, val_tasks=6, test_tasks=6, eval_batch_size=3)
    model = MetaNASModule(ways=3, image_size=14, search_space=SearchSpace(widths=(8, 16), depths=(2, 3)))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    injected = [PoisonBatch(epoch=0, batch=1, out=str(tmp_path / "poison.json"))] if fault == "nan_images" else [InfiniteGradient()]
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False, limit_val_batches=0,
                         callbacks=[FiniteLossGuard(), *injected], default_root_dir=tmp_path)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(model, datamodule=data)
    step = 1 if fault == "nan_images" else 0
    message = str(err.value)
    what = "the meta-loss is not finite (nan)" if fault == "nan_images" else "the meta-gradient is not finite (parameters: "
    assert message.startswith(what), message
    assert f"at global step {step} (epoch 0, batch {step}); architectures of that step: " \
        f"{_architectures_of_step(step)}; the optimiser step was not taken" in message
    assert err.value.step == step and [str(a) for a in err.value.architectures] == [str(a) for a in model.last_step_archs]
    if fault == "inf_gradient":  # nothing was stepped: the weights are the initial ones
        assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_guard_refuses_non_finite_checkpoints():
    from callbacks.guards import FiniteLossGuard, NonFiniteLossError

    guard, trainer, module = FiniteLossGuard(), _fake_trainer(), torch.nn.Linear(2, 1)
    guard.on_save_checkpoint(trainer, module, {"state_dict": {"w": torch.ones(2)}})
    with pytest.raises(NonFiniteLossError, match=r"refusing to write a checkpoint .* non-finite values in w"):
        guard.on_save_checkpoint(trainer, module, {"state_dict": {"w": torch.tensor([1.0, float("nan")])}})


# ---------------------------------------------------------------------------------------
# --ckpt_path=last
# ---------------------------------------------------------------------------------------
def test_last_is_the_highest_version_that_has_a_last_checkpoint(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    from lightning_metanas.cli import find_last_checkpoint
    from lightning_metanas.errors import SettingsError

    def trainer():
        return pl.Trainer(logger=CSVLogger(tmp_path, name="run"), enable_progress_bar=False,
                          callbacks=[ModelCheckpoint(filename="last")], enable_model_summary=False)

    with pytest.raises(SettingsError, match="no last.ckpt in"):
        find_last_checkpoint(trainer())
    for version, has_last in ((0, True), (2, True), (10, True), (11, False)):
        directory = tmp_path / "run" / f"version_{version}" / "checkpoints"
        directory.mkdir(parents=True)
        (directory / ("last.ckpt" if has_last else "epoch000.ckpt")).write_bytes(b"x")
    # numeric, not lexical (10 > 2), and version_11 (killed before its first epoch ended) skipped
    assert find_last_checkpoint(trainer()) == tmp_path / "run" / "version_10" / "checkpoints" / "last.ckpt"


# ---------------------------------------------------------------------------------------
# determinism, and kill-and-resume (slow: a few short searches in subprocesses)
# ---------------------------------------------------------------------------------------
EPOCHS, BATCHES = 5, 24
LONG_EPOCHS = [*SEARCH, *SYNTHETIC, f"--data.train_batches={BATCHES}", "--test=false",
               "--trainer.logger.init_args.flush_logs_every_n_steps=1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run("train.py", *LONG_EPOCHS, *logs(out, "search"), f"--trainer.max_epochs={EPOCHS}")
    return out / "search" / "version_0"


@pytest.mark.slow
def test_same_seed_same_search(tmp_path, uninterrupted):
    run("train.py", *LONG_EPOCHS, *logs(tmp_path, "again"), f"--trainer.max_epochs={EPOCHS}")
    again = tmp_path / "again" / "version_0"
    assert [h["generation"] for h in history(again)] == list(range(EPOCHS))
    assert history(again) == history(uninterrupted)  # architectures, scores, best, per generation
    best = "checkpoints/best_arch.json"
    assert (again / best).read_text() == (uninterrupted / best).read_text()
    a, b = state_dict(again / "checkpoints/last.ckpt"), state_dict(uninterrupted / "checkpoints/last.ckpt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _train_rows(metrics: Path) -> list[dict]:
    try:
        rows = list(csv.DictReader(io.StringIO(metrics.read_text())))
    except (OSError, csv.Error):
        return []
    return [r for r in rows if r.get("train/loss") and r.get("epoch")]


def _kill_mid_epoch(tmp_path: Path, sig: signal.Signals) -> tuple[subprocess.Popen, str, int]:
    """Start the search, wait until two generations are done and the third epoch has taken two
    steps, send ``sig``; returns the process, its stderr and the generations done before."""
    run_dir = tmp_path / "search" / "version_0"
    stderr = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *LONG_EPOCHS, *logs(tmp_path, "search"),
         f"--trainer.max_epochs={EPOCHS}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
        env=dict(os.environ, PYTHONWARNINGS="ignore", WANDB_MODE="disabled"),
    )
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run did not reach its third epoch in time"
        in_epoch_2 = [r for r in _train_rows(run_dir / "metrics.csv") if int(float(r["epoch"])) == 2]
        if len(in_epoch_2) >= 2:
            break
        time.sleep(0.02)
    done_before = [h["generation"] for h in history(run_dir)]
    proc.send_signal(sig)
    proc.wait(timeout=120)
    stderr.close()
    return proc, (tmp_path / "stderr.txt").read_text(), done_before


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_search_resumes_with_nothing_lost(tmp_path, uninterrupted, sig):
    proc, stderr, done_before = _kill_mid_epoch(tmp_path, sig)
    killed = tmp_path / "search" / "version_0"
    last = killed / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    # the kill came mid-epoch 2: steps of epoch 2 were taken, last.ckpt is the end of epoch 1
    assert done_before == [0, 1]
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 2 * BATCHES)
    steps = [int(r["step"]) for r in _train_rows(killed / "metrics.csv")]
    assert 2 * BATCHES < max(steps) + 1 < 3 * BATCHES, max(steps)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "Traceback" not in stderr
        line = stderr.strip().splitlines()[-1]
        assert line.startswith("error: stopped by SIGTERM at global step ") and "(epoch 2)" in line
        assert f"kept: {last}, the end of the last complete epoch" in line
    else:
        assert proc.returncode == -signal.SIGKILL

    out = run("train.py", *LONG_EPOCHS, *logs(tmp_path, "search"), f"--trainer.max_epochs={EPOCHS}",
              "--ckpt_path=last").stdout
    assert f"resuming from {last}" in out
    resumed = tmp_path / "search" / "version_1"
    generations = [h["generation"] for h in history(resumed)]
    assert generations == list(range(EPOCHS))  # no gap, no duplicate
    assert history(resumed) == history(uninterrupted)  # same architectures, scores, best
    a, b = state_dict(resumed / "checkpoints/last.ckpt"), state_dict(uninterrupted / "checkpoints/last.ckpt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    print(f"\n{sig.name}: generations before the kill {done_before}, killed at step {max(steps)} "
          f"(epoch 2), after resume {generations[len(done_before):]}, final {generations}")


class TermAtEpochEnd(Callback):
    """Test-only: SIGTERM to its own process at the end of epoch ``epoch``, right after that
    epoch's search generation (the search's callback always stands first) and before the
    checkpoint callbacks (Lightning runs those last)."""

    def __init__(self, epoch: int = 2) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_during_a_generation_keeps_it_and_resumes_after_it(tmp_path, uninterrupted):
    """Lightning only flags SIGTERM; the generation and the epoch's checkpoint complete, and
    the run stops before the next epoch: the resumed run starts at the next generation."""
    args = [*LONG_EPOCHS, *logs(tmp_path, "search"), f"--trainer.max_epochs={EPOCHS}"]
    proc = run("train.py", *args, "--trainer.callbacks+=tests.test_reliability.TermAtEpochEnd",
               "--trainer.callbacks.epoch=2", check=False)
    assert proc.returncode == 143, proc.stderr[-3000:]
    killed = tmp_path / "search" / "version_0"
    _error_line(proc.stderr, [f"stopped by SIGTERM at global step {3 * BATCHES} ",
                              f"kept: {killed / 'checkpoints' / 'last.ckpt'}"])
    assert [h["generation"] for h in history(killed)] == [0, 1, 2]
    checkpoint = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (2, 3 * BATCHES)
    run("train.py", *args, "--ckpt_path=last")
    resumed = tmp_path / "search" / "version_1"
    assert history(resumed) == history(uninterrupted)


# ---------------------------------------------------------------------------------------
# bad data, as train.py reports it (the data module's own checks: tests/test_data.py)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["not_a_zip", "truncated_zip", "undecodable_image", "class_too_small"])
def test_bad_data_fails_with_one_line_naming_the_file(tmp_path, capsys, damage):
    import zipfile

    from tests.helpers import make_fake_omniglot

    # every background character with 2 drawings: the train split, checked first, has some
    small = {f"images_background/A{a}/c{c}": 2 for a in range(2) for c in range(4)}
    small = small if damage == "class_too_small" else None
    # 32 characters: 2 in the val split, enough for data.ways=2 (the split is checked before
    # anything is decoded, so a dataset too small for the task settings never reaches the image)
    root = make_fake_omniglot(tmp_path / "omni", drawings=small, characters=8)
    background = root / "images_background.zip"
    if damage == "not_a_zip":
        background.write_bytes(b"<html>404 Not Found</html>")
        needles = [str(background), "zip"]
    elif damage == "truncated_zip":
        background.write_bytes(background.read_bytes()[:700])
        needles = [str(background), "zip"]
    elif damage == "undecodable_image":
        with zipfile.ZipFile(root / "images_evaluation.zip", "a") as archive:
            archive.writestr("images_evaluation/A0/c0/9999_05.png", b"not a png")
        needles = ["images_evaluation.zip", "images_evaluation/A0/c0/9999_05.png"]
    else:
        needles = ["Omniglot class 'images_background/A", "train split) has 2 images",
                   "data.shots + data.queries = 1 + 3 = 4"]
    err = train_in_process(capsys, *SYNTHETIC, *logs(tmp_path, "data"), "--data.dataset=omniglot",
                           f"--data.root={root}", "--data.ways=2", "--data.queries=3",
                           "--trainer.max_epochs=1")
    _error_line(err, needles)
    no_run_started(tmp_path / "data")


# ---------------------------------------------------------------------------------------
# bad image datasets (split folders, CSV splits, their cache), as train.py reports them
# ---------------------------------------------------------------------------------------
def _plant_cache(root: Path, tmp_path: Path, size: int) -> Path:
    """The cache of another dataset (``size`` 16) or of this one at another size, under the name
    this dataset's 16px cache has."""
    from lightning_metanas.data import EpisodicDataModule, read_split_layout
    from lightning_metanas.data.image_cache import cache_name
    from tests.test_datasets import tiny

    source = root if size != 16 else tiny(tmp_path / "other", seed=1)
    EpisodicDataModule(dataset="folder", root=str(source), image_size=size, ways=3, queries=2).prepare_data()
    [built] = (source / ".cache").glob(f"*-{size}px-*.u8")
    target = root / ".cache" / cache_name("folder", read_split_layout(root, "image folder"), 16, None, False)
    target.parent.mkdir(exist_ok=True)
    built.rename(target)
    return target


def _image(root: Path, split: str, label: int, index: int) -> Path:
    return root / split / f"n{label:08d}" / f"n{label:08d}{index:08d}.jpg"


def damage_dataset(case: str, r: Path, tmp_path: Path) -> list[str]:
    """Damage the tiny dataset at ``r`` (4 / 3 / 3 classes of 6 images) as ``case`` says;
    returns what the one error line must hold."""
    import shutil

    if case == "missing_split_folder":
        shutil.rmtree(r / "val")
        return [f"missing split folder {r / 'val'}"]
    if case == "missing_csv":
        (r / "test.csv").unlink()
        return [f"missing split file {r / 'test.csv'}"]
    if case == "csv_names_a_missing_file":
        (r / "images" / "n0000000100000002.jpg").unlink()
        return [f"{r / 'train.csv'} line 9 names {r / 'images' / 'n0000000100000002.jpg'}, which does not exist"]
    if case == "csv_without_header":
        (r / "val.csv").write_text("n0000000400000001.jpg,n00000004\n")
        return [f"{r / 'val.csv'}: the first line must be the header filename,label"]
    if case == "class_in_two_splits":
        shutil.copytree(r / "train" / "n00000000", r / "val" / "n00000000")
        return [f"class 'n00000000' is in two splits, {r / 'train' / 'n00000000'} and {r / 'val' / 'n00000000'}"]
    if case == "class_in_two_csvs":
        (r / "val.csv").write_text((r / "val.csv").read_text().replace(",n00000004", ",n00000000", 1))
        return [f"class 'n00000000' is in two splits, at {r / 'train.csv'} line 2 and at {r / 'val.csv'} line 2"]
    if case == "image_in_two_csvs":
        with (r / "val.csv").open("a") as f:
            f.write("n0000000000000001.jpg,n00000001\n")
        return [f"{r / 'val.csv'} line 20 lists n0000000000000001.jpg again (first listed at {r / 'train.csv'} line 2)"]
    if case == "class_too_small":
        for i in (3, 4, 5, 6):
            _image(r, "train", 1, i).unlink()
        return ["image dataset class 'n00000001' (label 1, train split) has 2 images, fewer than "
                "data.shots + data.queries = 1 + 2 = 3"]
    if case == "undecodable_image":
        _image(r, "val", 5, 2).write_bytes(b"<html>404</html>")
        return [f"cannot decode image {_image(r, 'val', 5, 2)}: cannot identify image file"]
    if case == "truncated_image":
        path = _image(r, "test", 8, 6)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return [f"cannot decode image {path}: Truncated File Read"]
    if case == "empty_class_folder":
        (r / "test" / "n00000099").mkdir()
        return [f"class folder {r / 'test' / 'n00000099'} is empty"]
    if case == "empty_split_folder":
        shutil.rmtree(r / "test")
        (r / "test").mkdir()
        return [f"image folder {r / 'test'} has no class folders"]
    if case == "empty_root":
        for split in ("train", "val", "test"):
            shutil.rmtree(r / split)
        return [f"--data.root {r} holds neither layout of an image dataset; expected split folders"]
    if case == "both_layouts":
        (r / "train.csv").write_text("filename,label\n")
        return [f"{r} holds both layouts (train/, val/, test/, train.csv)"]
    if case == "sixteen_bit_image_among_rgb":  # mixed 8-bit gray and RGB are converted (test_datasets)
        path = r / "train" / "n00000002" / "deep.png"
        Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(path)
        return [f"image {path} has PIL mode 'I;16'", "convert it to an 8-bit image"]
    if case in ("cache_of_another_dataset", "cache_of_another_size"):
        size = 16 if case == "cache_of_another_dataset" else 12
        differs = "fingerprint" if size == 16 else "image_size"
        return [f"image cache {_plant_cache(r, tmp_path, size)} was written for another dataset or "
                f"setting (its {differs}"]
    if case == "fewer_classes_than_ways":
        shutil.rmtree(r / "val" / "n00000006")
        return ["data.ways=3 is more than the 2 classes of the image dataset val split; use data.ways <= 2"]
    raise AssertionError(case)


BAD_DATASETS = {  # case -> layout
    "missing_split_folder": "folders", "missing_csv": "csv", "csv_names_a_missing_file": "csv",
    "csv_without_header": "csv", "class_in_two_splits": "folders", "class_in_two_csvs": "csv",
    "image_in_two_csvs": "csv", "class_too_small": "folders", "undecodable_image": "folders",
    "truncated_image": "folders", "empty_class_folder": "folders", "empty_split_folder": "folders",
    "empty_root": "folders", "both_layouts": "folders", "sixteen_bit_image_among_rgb": "folders",
    "cache_of_another_dataset": "folders", "cache_of_another_size": "folders",
    "fewer_classes_than_ways": "folders",
}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_image_dataset_fails_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    from tests.test_datasets import tiny

    root = tiny(tmp_path / "data", layout=BAD_DATASETS[case])
    needles = damage_dataset(case, root, tmp_path)
    before = _snapshot(root)
    err = train_in_process(capsys, *SYNTHETIC, *logs(tmp_path, "runs"), "--data.dataset=folder",
                           f"--data.root={root}", "--data.image_size=16", "--trainer.max_epochs=1")
    _error_line(err, needles)
    assert _snapshot(root) == before  # no cache, no temporary file, nothing touched
    no_run_started(tmp_path / "runs")


# ---------------------------------------------------------------------------------------
# what a user sees and hits (issue 21): multi-process runs, logs, terminal, bad inputs
# ---------------------------------------------------------------------------------------
QUICK_SEARCH = [*SEARCH[:2], *SYNTHETIC, "--trainer.max_epochs=2", "--search.generations=2",
                "--search.population_size=4", "--search.offspring=2", "--search.pool_size=4",
                "--search.tournament_size=2", "--search.tasks_per_score=3", "--search.score_queries=2"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [["--trainer.strategy=ddp"], []], ids=["strategy_ddp", "devices_only"])
def test_plain_ddp_spellings_run_a_search_to_the_end_on_two_cpu_processes(tmp_path, strategy):
    """``--trainer.strategy=ddp`` (and ``--trainer.devices=2`` alone) used to hang: the SuperNet
    leaves parameters unused, so the CLI picks DDP with unused parameters allowed."""
    proc = run("train.py", *QUICK_SEARCH, *logs(tmp_path, "ddp"), "--trainer.accelerator=cpu",
               "--trainer.devices=2", *strategy)
    assert "meta-test:" in proc.stdout and "Grad strides" not in proc.stderr
    assert [line.split(":")[1].strip() for line in proc.stdout.splitlines() if line.startswith("search: generation")] \
        == ["generation 1/2", "generation 2/2"]
    best = json.loads((tmp_path / "ddp" / "version_0" / "checkpoints" / "best_arch.json").read_text())
    assert best["ops"]


@pytest.mark.slow
def test_each_generation_is_its_own_step_in_csv_and_tensorboard_and_stdout_has_lines(tmp_path):
    """All generations at one epoch's end: one CSV row each (not one averaged row), TensorBoard
    scalars with the generation as step, and, stdout not being a terminal, a line per
    generation and per epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run("train.py", *QUICK_SEARCH, *logs(tmp_path, "logs"), "--search.generations=3",
               "--search.warmup_epochs=0", "--tensorboard=true")
    run_dir = tmp_path / "logs" / "version_0"
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("search/generation")]
    assert [float(r["search/generation"]) for r in rows] == [0.0, 1.0, 2.0]
    assert {r["epoch"] for r in rows} == {"0"}  # all three at the end of the first epoch
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0}).Reload()
    assert [e.step for e in events.Scalars("search/best_score")] == [0, 1, 2]
    assert "search/search_curve" in events.Tags()["images"]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("search: generation") for line in lines) == 3
    assert [line.split(" (")[0] for line in lines if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    assert "[]" not in proc.stdout and "LeafSpec" not in proc.stderr and "Tip:" not in proc.stdout + proc.stderr
    assert (tmp_path / "logs" / "version_0" / "report.html").is_file()  # the run kept its name and folder


def test_dangling_and_self_referencing_symlinks_are_named_in_one_line(tmp_path):
    from lightning_metanas.data import DataError, load_image_folder
    from tests.helpers import write_shapes

    dangling = write_shapes(tmp_path / "dangling", per_class=3)
    (dangling / "disc" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    looped = write_shapes(tmp_path / "looped", per_class=3)
    (looped / "disc" / "self.png").symlink_to(looped / "disc" / "self.png")
    for root, name, why in ((dangling, "gone.png", "a symbolic link to nothing readable"),
                            (looped, "self.png", "a symbolic link that cannot be followed")):
        with pytest.raises(DataError, match=f"image {root / 'disc' / name} is {why}") as err:
            load_image_folder(root, image_size=14)
        assert "\n" not in str(err.value)


def _folder_listing(tmp_path):
    from lightning_metanas.data.folder import image_folder_listing
    from tests.helpers import write_shapes

    return image_folder_listing(write_shapes(tmp_path / "shapes", per_class=40))


def test_a_cache_that_cannot_be_written_decodes_in_memory_and_leaves_nothing(tmp_path):
    """Disk full (here: a file-size limit, EFBIG): one warning, the images decoded in memory,
    no half-written file."""
    script = (
        "import resource, sys, warnings; sys.path.insert(0, sys.argv[1])\n"
        "from lightning_metanas.data.folder import image_folder_listing\n"
        "from lightning_metanas.data.image_cache import decode_images\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    store = decode_images(image_folder_listing(sys.argv[2]), 'folder', 28, cache_dir=sys.argv[3])\n"
        "print(len(store), store.path, [str(w.message) for w in seen])\n"
    )
    from tests.helpers import write_shapes

    folder = write_shapes(tmp_path / "shapes", per_class=40)
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT), str(folder), str(cache)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.startswith("160 None ") and "cannot write the image cache" in proc.stdout
    assert "File too large" in proc.stdout and list(cache.iterdir()) == []


def test_abandoned_half_written_caches_are_swept_before_the_next_decode(tmp_path):
    from lightning_metanas.data.image_cache import decode_images

    listing = _folder_listing(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = cache / f".folder-28px-auto-{listing.fingerprint[:16]}.u8.{int(dead.stdout)}.tmp"
    abandoned.write_bytes(b"\0" * 100_000)  # a run killed late in its decode
    store = decode_images(listing, "folder", 28, cache_dir=cache)
    assert len(store) == 160 and not abandoned.exists()
    assert [p.name for p in cache.iterdir()] == [store.path.name]


def test_a_cache_with_damaged_pixels_is_detected_and_rebuilt(tmp_path):
    from lightning_metanas.data.image_cache import decode_images

    listing = _folder_listing(tmp_path)
    cache = tmp_path / "cache"
    first = decode_images(listing, "folder", 28, cache_dir=cache)
    good = first.uint8(0, len(first)).copy()
    with open(first.path, "r+b") as f:  # zero a block of pixels, header intact
        f.seek(first.offset + 50 * 28 * 28)
        f.write(b"\0" * (20 * 28 * 28))
    with pytest.warns(UserWarning, match="is damaged .*class 1 do not add up.*rebuilding it"):
        again = decode_images(listing, "folder", 28, cache_dir=cache)
    assert np.array_equal(again.uint8(0, len(again)), good)


@pytest.mark.parametrize("steps", ["-1", "0"])
def test_eval_refuses_adaptation_steps_below_one(small_checkpoint, steps):
    line = eval_in_process("--ckpt_path", str(small_checkpoint), "--model.meta.eval_inner_steps", steps)
    assert line == f"error: --model.meta.eval_inner_steps must be an integer >= 1, got {steps}"


def test_a_gpu_asked_for_where_there_is_none_is_one_line(tmp_path, capsys, small_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = train_in_process(capsys, *SYNTHETIC, *logs(tmp_path, "gpu"), "--trainer.accelerator=gpu")
    assert _error_line(err, ["--trainer.accelerator=gpu: no CUDA GPU was found on this machine",
                             "use --trainer.accelerator=cpu"])
    line = eval_in_process("--ckpt_path", str(small_checkpoint), "--trainer.accelerator", "gpu")
    assert "no CUDA GPU was found" in line
    no_run_started(tmp_path)


def test_a_warmup_that_outlasts_the_run_is_refused_before_training(tmp_path, capsys):
    err = train_in_process(capsys, *QUICK_SEARCH, *logs(tmp_path, "warm"), "--trainer.max_epochs=3",
                           "--search.warmup_epochs=3")
    assert _error_line(err, ["search.warmup_epochs=3 leaves no epoch for the search in a run of 3 epochs"])
    no_run_started(tmp_path)


def test_old_flag_spellings_name_the_new_ones(small_checkpoint):
    for old, new in (("--root", "--data.root"), ("--arch", "--model.eval_arch"), ("--seed", "--data.seed"),
                     ("--eval_inner_steps", "--model.meta.eval_inner_steps")):
        line = eval_in_process("--ckpt_path", str(small_checkpoint), old, "x")
        assert line.startswith(f"error: {old} is now {new}"), line


def test_one_seed_flag_sets_the_models_the_datas_and_the_searchs(tmp_path):
    run("train.py", *QUICK_SEARCH, *logs(tmp_path, "seed"), "--seed_everything=7", "--trainer.max_epochs=1",
        "--search.warmup_epochs=0", "--search.generations=1", "--test=false")
    config = yaml_load(tmp_path / "seed" / "version_0" / "config.yaml")
    assert (config["model"]["seed"], config["data"]["seed"], config["search"]["seed"]) == (7, 7, 7)


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())
