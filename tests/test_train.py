"""End to end: train.py, eval.py and the search, as a user runs them (subprocesses)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_metanas.checkpoints import data_settings
from lightning_metanas.search_space import Architecture

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = [
    "--data.dataset=synthetic", "--data.image_size=14", "--data.ways=3", "--data.queries=2",
    "--data.meta_batch_size=4", "--data.train_batches=3", "--data.val_tasks=6",
    "--data.test_tasks=6", "--data.eval_batch_size=3", "--trainer.enable_progress_bar=false",
    "--trainer.log_every_n_steps=1",
    "--model.search_space.widths=[8,16]", "--model.search_space.depths=[2,3]",
]
SEARCH = [
    "--config", "configs/search_quick.yaml",
    "--search.population_size=4",
    "--search.offspring=2",
    "--search.pool_size=6",
    "--search.tournament_size=2",
    "--search.tasks_per_score=4",
    "--search.predictor.min_archive=6",
    # the co-adaptive mode (one generation per epoch, from the first) that these tests exercise;
    # search_quick's own default (warm-up, then every generation at once) has its own test
    "--search.warmup_epochs=0", "--search.generations_per_epoch=1", "--search.generations=null",
    "--search.score_queries=null", "--search.size_prior=0", "--search.rescore_population=true",
    "--model.sampling=uniform",
]


def run(script, *args, cwd=ROOT, check=True):
    env = dict(os.environ, PYTHONWARNINGS="ignore", WANDB_MODE="disabled")
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
        env=env, timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def logs(tmp_path, name):
    return [f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.logger.init_args.name={name}"]


def test_fast_dev_run_of_train_py_on_omniglot():
    proc = run("train.py", "--config", "configs/omniglot_5w1s.yaml", "--trainer.fast_dev_run=true",
               "--trainer.enable_progress_bar=false")
    assert "meta-test:" in proc.stdout and "5-way 1-shot" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.ways=0"], "data.ways must be an integer >= 1, got 0"),
        (["--data.root=/no/such/dir"], "/no/such/dir"),
        (["--data.shots=10", "--data.queries=15"], "data.shots"),
        (["--model.search_space.ops=[conv3x3,conv9x9]"], "unknown operation(s) ['conv9x9']"),
        (["--model.eval_arch=/no/arch.json"], "architecture file /no/arch.json does not exist"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(args, message):
    proc = run("train.py", *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_then_eval_a_checkpoint(tmp_path):
    run("train.py", *SYNTHETIC, *logs(tmp_path, "plain"), "--trainer.max_epochs=2")
    run_dir = tmp_path / "plain" / "version_0"
    assert (run_dir / "config.yaml").is_file()  # the config actually used, next to checkpoints/
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert {"val/acc", "val/acc_ci95", "train/loss"} <= set(metrics[0].split(","))
    out = run("eval.py", "--ckpt_path", str(ckpt), "--data.test_tasks", "9").stdout
    assert "over 9 tasks, 3-way 1-shot" in out
    again = run("eval.py", "--ckpt_path", str(ckpt), "--data.test_tasks", "9").stdout
    assert out.splitlines()[-1] == again.splitlines()[-1]  # seeded: same command, same number


@pytest.mark.slow
def test_search_writes_best_arch_history_and_metrics(tmp_path):
    run("train.py", *SEARCH, *SYNTHETIC, *logs(tmp_path, "search"), "--trainer.max_epochs=3")
    ckpt_dir = tmp_path / "search" / "version_0" / "checkpoints"
    history = json.loads((ckpt_dir / "search_history.json").read_text())
    assert [h["generation"] for h in history] == [0, 1, 2]
    best = json.loads((ckpt_dir / "best_arch.json").read_text())
    assert best == history[-1]["best_arch"]
    header = (tmp_path / "search" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    for key in ("search/best_score", "search/mean_score", "search/diversity",
                "search/real_scorings", "search/predictor_tau"):
        assert key in header
    out = run("eval.py", "--ckpt_path", str(ckpt_dir / "last.ckpt"), "--model.eval_arch",
              str(ckpt_dir / "best_arch.json"), "--data.test_tasks", "6").stdout
    assert str(Architecture.of(best)) in out


@pytest.mark.slow
def test_resume_gives_the_same_next_generation(tmp_path):
    run("train.py", *SEARCH, *SYNTHETIC, *logs(tmp_path, "full"), "--trainer.max_epochs=3")
    run("train.py", *SEARCH, *SYNTHETIC, *logs(tmp_path, "cut"), "--trainer.max_epochs=2")
    cut = tmp_path / "cut" / "version_0" / "checkpoints" / "last.ckpt"
    run("train.py", *SEARCH, *SYNTHETIC, *logs(tmp_path, "cut"), "--trainer.max_epochs=3",
        f"--ckpt_path={cut}")
    full = json.loads((tmp_path / "full/version_0/checkpoints/search_history.json").read_text())
    resumed = json.loads((tmp_path / "cut/version_1/checkpoints/search_history.json").read_text())
    assert len(full) == len(resumed) == 3
    assert resumed == full  # same architectures, same scores, same best, generation by generation
    a = torch.load(tmp_path / "full/version_0/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "cut/version_1/checkpoints/last.ckpt", weights_only=True)
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


@pytest.mark.slow
def test_ddp_two_processes_share_population_and_shard_scoring(tmp_path):
    from lightning_metanas.data import EpisodicDataModule
    from lightning_metanas.module import MetaNASModule
    from lightning_metanas.scoring import score_architectures, stack_tasks
    from lightning_metanas.search_space import Architecture

    dump = tmp_path / "ranks"
    run("train.py", *SEARCH, *SYNTHETIC, *logs(tmp_path, "ddp"), "--trainer.max_epochs=2",
        "--trainer.accelerator=cpu", "--trainer.devices=2",
        "--trainer.strategy=ddp_find_unused_parameters_true",
        "--trainer.callbacks+=tests.probes.RankStateDump", f"--trainer.callbacks.out_dir={dump}",
        "--test=false")
    for epoch in (0, 1):
        r0 = json.loads((dump / f"rank0_epoch{epoch}.json").read_text())
        r1 = json.loads((dump / f"rank1_epoch{epoch}.json").read_text())
        assert r0["population"] == r1["population"] and len(r0["population"]) == 4
        assert r0["weights_l1"] == r1["weights_l1"]  # averaged meta-gradients: same weights
        # each rank meta-trained on its own tasks (rank-offset task sampling)
        assert r0["first_support_images_sum"] != r1["first_support_images_sum"]
    # sharded scoring == single-process scoring of the same candidates with the same weights
    ckpt_path = tmp_path / "ddp/version_0/checkpoints/last.ckpt"
    checkpoint = torch.load(ckpt_path, weights_only=True)
    state = next(v for k, v in checkpoint["callbacks"].items() if "EvolutionCallback" in k)
    model = MetaNASModule.load_from_checkpoint(ckpt_path, weights_only=True)
    data = EpisodicDataModule(**data_settings(checkpoint))
    data.setup("fit")
    val = data.task_dataset("val")
    tasks = stack_tasks([val[i] for i in range(4)])
    archs = [Architecture.from_dict(m["arch"]) for m in state["population"]]
    scores = score_architectures(model.adapter, archs, tasks, model.meta.eval_inner_steps)
    assert scores == pytest.approx([m["score"] for m in state["population"]], abs=1e-6)


@pytest.mark.parametrize("setting", ["5w1s", "5w5s", "20w1s", "20w5s"])
def test_results_commands_parse_with_equal_budgets(setting):
    """The two commands of each configs/results file (as RESULTS.md prints them) resolve to
    the same data and budget, differing only in how the SuperNet is meta-trained."""
    text = (ROOT / "configs" / "results" / f"omniglot_{setting}.yaml").read_text()
    configs = {}
    for arm in ("Conv-4 (MAML baseline)", "searched"):
        line = next(l for l in text.splitlines() if l.startswith(f"#   {arm}:"))
        args = line.split("python train.py ", 1)[1].split()
        configs[arm] = yaml.safe_load(run("train.py", *args, "--print_config").stdout)
    conv4, search = configs["Conv-4 (MAML baseline)"], configs["searched"]
    group = yaml.safe_load((ROOT / "configs" / "meta" / f"cpu_omniglot_{setting.split('w')[0]}way.yaml").read_text())
    assert {k: conv4["model"]["meta"][k] for k in group} == group == {k: search["model"]["meta"][k] for k in group}
    assert conv4["data"] == search["data"] and conv4["data"]["shots"] == int(setting[-2])
    assert conv4["trainer"]["max_epochs"] == search["trainer"]["max_epochs"]
    assert conv4["model"]["train_arch"] == "reference" and search["model"]["train_arch"] is None
    assert conv4["search"] is None  # no search section: no search
    settings, epochs = search["search"], search["trainer"]["max_epochs"]
    # the warm-up, then every generation at one epoch's end, then the pick alone: half and half
    last_search_epoch = settings["warmup_epochs"] + -(-settings["generations"] // settings["generations_per_epoch"]) - 1
    assert settings["generations"] >= 1 and 2 * (last_search_epoch + 1) == epochs
    assert settings["strategy"] == "evolution" and settings["size_prior"] > 0
    assert search["model"]["sampling"] == "fair"


def test_meta_config_groups_resolve_from_any_directory(tmp_path):
    """A config names its MAML loop as a group file (``meta: meta/<name>.yaml``, relative to
    the config); every group named exists, holds MetaConfig fields only, and resolves the
    same whichever directory the command runs from."""
    from lightning_metanas.meta_config import MetaConfig

    fields = set(MetaConfig.__dataclass_fields__)
    named = set()
    for config in (ROOT / "configs").rglob("*.yaml"):
        for line in config.read_text().splitlines():
            if line.strip().startswith("meta: "):
                group = (config.parent / line.split(": ", 1)[1].strip()).resolve()
                assert group.is_file(), (config, group)
                assert set(yaml.safe_load(group.read_text())) <= fields
                named.add(group)
    assert len(named) == len(list((ROOT / "configs" / "meta").glob("*.yaml"))) == 5  # each group is used
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/omniglot_20w5s.yaml"),
                           "--print_config"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    meta = yaml.safe_load(proc.stdout)["model"]["meta"]
    expected = yaml.safe_load((ROOT / "configs/meta/maml_omniglot_20way.yaml").read_text())
    assert {k: meta[k] for k in expected} == expected and meta["inner_steps"] == 5, proc.stderr


def _cli(*args):
    import train
    from lightning_metanas.cli import build_cli

    return build_cli(list(args), forced_callbacks={"finite_guard": train.FiniteLossGuard,
                                                   "tracking": train.SearchTrackingCallback},
                     search_callback=train.EvolutionCallback)


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_search_group_switches_the_search_on_and_stands_first(tmp_path):
    from callbacks.evolution import EvolutionCallback
    from callbacks.tracking import SearchTrackingCallback
    from lightning_metanas.search_config import SearchConfig

    plain = _cli(*SYNTHETIC, *logs(tmp_path, "plain"))
    assert plain.config.search is None
    assert not [c for c in plain.trainer.callbacks if isinstance(c, EvolutionCallback)]
    assert [c for c in plain.trainer.callbacks if isinstance(c, SearchTrackingCallback)]  # inert without a search

    probe = ["--trainer.callbacks+=tests.probes.RankStateDump", f"--trainer.callbacks.out_dir={tmp_path}"]
    flags = _cli(*SYNTHETIC, *logs(tmp_path, "flags"), *probe, "--search.strategy=random", "--search.generations=7")
    first = flags.trainer.callbacks[0]
    assert isinstance(first, EvolutionCallback)  # before the user's callbacks, whatever their order
    # the measured search's defaults with the one change asked for; its seed from --seed_everything
    assert first.config == SearchConfig(strategy="random", generations=7, seed=0)
    config = _cli(*SEARCH, *SYNTHETIC, *logs(tmp_path, "config"), "--search.seed=3")
    assert config.trainer.callbacks[0].config.population_size == 4 and config.trainer.callbacks[0].config.seed == 3
    off = _cli(*SEARCH, *SYNTHETIC, *logs(tmp_path, "off"), "--search=null")
    assert not [c for c in off.trainer.callbacks if isinstance(c, EvolutionCallback)]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("old, new", [
    ("--trainer.callbacks.init_args.evolution.population_size=8", "--search.population_size"),
    ("--trainer.callbacks.evolution.predictor.min_archive=6", "--search.predictor.min_archive"),
])
def test_retired_search_flag_names_the_new_one(capsys, old, new):
    import train

    assert train.cli_main([*SYNTHETIC, old]) == 1
    assert capsys.readouterr().err == f"error: {old.split('=')[0]} is now {new}\n"


@pytest.mark.slow
def test_help_answers_from_the_committed_text_which_equals_the_live_parsers():
    """``train.py --help`` prints docs/train_help.txt without importing Lightning; that file must
    be what the parser prints today (scripts/write_help.py rewrites it)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from write_help import live_help

    committed = (ROOT / "docs" / "train_help.txt").read_text()
    assert live_help() == committed, "docs/train_help.txt is stale: run .venv/bin/python scripts/write_help.py"
    fast = run("train.py", "--help")
    assert fast.stdout == committed
    every_option = [line for line in committed.splitlines() if line.startswith("  --")]
    assert len(every_option) > 100 and "--search.max_flops" in committed and "--search.predictor.min_tau" in committed
