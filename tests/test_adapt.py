"""adapt.py: a labelled image folder, a short search on it warm-started from the meta-search
(or from scratch), fine-tuning from the meta-weights; the folder loader and its errors."""
import json
from collections import Counter
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_metanas.adaptation import (
    FinetuneConfig,
    TaskSearchConfig,
    adapt,
    adaptation_evolution_config,
    check_images_per_class,
    meta_population,
    scoring_tasks,
    search_architecture,
    task_network,
)
from lightning_metanas.data import DataError, LabelledImages, load_image_folder, split_image_folder
from lightning_metanas.adapted_model import Preprocessing
from lightning_metanas.commands import device_for
from lightning_metanas.errors import SettingsError, run_main
from lightning_metanas.evolution import EvolutionarySearch, EvolutionConfig
from lightning_metanas.scoring import Scorer
from lightning_metanas.search_config import SearchConfig
from lightning_metanas.maml import TaskAdapter
from lightning_metanas.meta_config import MetaConfig
from lightning_metanas.predictor import PredictorConfig
from lightning_metanas.search_space import Architecture, SearchSpace
from lightning_metanas.supernet import SuperNet
from tests.helpers import draw, write_shapes
from tests.test_train import ROOT, SEARCH, SYNTHETIC

sys.path.insert(0, str(ROOT))
import adapt as adapt_cli  # noqa: E402

LINE = re.compile(
    r"^adapt: (warm-start|from-scratch) search of (\d+) scorings in [\d.]+s, fine-tune in "
    r"[\d.]+s: held-out accuracy ([\d.]+)% one image at a time \(([\d.]+)% as one batch\) on (\d+) classes "
    r"\((\d+) images\), architecture (\S+)$"
)


def start(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "adapt.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, expect=0):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == expect, f"{proc.args} exited {proc.returncode}:\n{out[-2000:]}\n{err[-4000:]}"
    return out, err


# -- the image folder ----------------------------------------------------------------------
def test_load_image_folder_shapes_labels_formats_and_split(tmp_path):
    rng = random.Random(1)
    counts = {"b_frame": 6, "a_disc": 5, "c_bars": 4}
    for name, n in counts.items():
        (tmp_path / name).mkdir()
        for i in range(n):
            img = draw({"a_disc": "disc", "b_frame": "frame", "c_bars": "hbars"}[name], rng)
            suffix = [".png", ".jpg", ".bmp", ".gif", ".JPEG"][i % 5]
            (img.convert("RGB") if i == 0 else img).save(tmp_path / name / f"{i}{suffix}")
    (tmp_path / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    data = load_image_folder(tmp_path, image_size=14)
    assert data.images.shape == (15, 1, 14, 14) and data.images.dtype == torch.float32
    assert data.class_names == ["a_disc", "b_frame", "c_bars"]  # folder-name order
    assert data.labels.tolist() == [0] * 5 + [1] * 6 + [2] * 4
    assert 0.0 <= float(data.images.min()) and float(data.images.max()) <= 1.0
    assert float(data.images.mean()) < 0.5  # white shapes on black: mostly 0
    inverted = load_image_folder(tmp_path, image_size=14, invert=True)
    assert torch.allclose(inverted.images, 1 - data.images)
    assert load_image_folder(tmp_path, image_size=9, channels=3).images.shape == (15, 3, 9, 9)

    train, val = split_image_folder(data, val_fraction=0.25, seed=0)
    assert val.labels.tolist() == [0] + [1, 1] + [2]  # round(n / 4), at least 1 per class
    assert train.labels.bincount().tolist() == [4, 4, 3]
    assert train.class_names == val.class_names == data.class_names
    again_train, again_val = split_image_folder(data, val_fraction=0.25, seed=0)
    assert torch.equal(again_val.images, val.images) and torch.equal(again_train.images, train.images)
    other = [split_image_folder(data, 0.25, seed=s)[1].images for s in range(1, 6)]
    assert any(not torch.equal(o, val.images) for o in other)  # the seed matters
    def rows(images):
        return Counter(tuple(x.flatten().tolist()) for x in images)

    assert rows(torch.cat([train.images, val.images])) == rows(data.images)  # a partition


def test_image_folder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(DataError, match="image folder not found: .*nowhere"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    draw("disc", random.Random(0)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="no class folders .*holds 1 images directly"):
        load_image_folder(tmp_path / "flat")
    root = write_shapes(tmp_path / "task", per_class=3)
    for extra in root.joinpath("frame").iterdir():
        if extra.name != "00.png":
            extra.unlink()
    with pytest.raises(DataError, match=r"class folder .*frame has 1 image; every class needs at least 2"):
        load_image_folder(root)
    draw("frame", random.Random(0)).save(root / "frame" / "01.png")
    (root / "disc" / "03.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"cannot decode image .*disc/03\.png"):
        load_image_folder(root)
    (root / "disc" / "03.png").unlink()
    (root / "disc" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt is not an image file"):
        load_image_folder(root)
    with pytest.raises(DataError, match="val_fraction"):
        split_image_folder(LabelledImages(torch.zeros(4, 1, 2, 2), torch.tensor([0, 0, 1, 1]), ["a", "b"]), 1.0)


# -- the search and the network, in process ------------------------------------------------
TINY = SearchSpace(widths=(4, 8), depths=(2, 3))


def toy_meta_state(seed=0):
    """An EvolutionarySearch state like a checkpoint's, with a trusted predictor."""
    config = EvolutionConfig(population_size=4, offspring=2, pool_size=8, tournament_size=2,
                             predictor=PredictorConfig(min_archive=6, min_tau=-1.0, epochs=50))
    search = EvolutionarySearch(TINY, config, seed=seed)
    for _ in range(4):
        archs = search.to_score(search.propose())
        search.accept({a: sum(op == "conv3x3" for op in a.ops) / a.depth for a in archs})
    assert search.predictor.ready
    return search.state_dict()


def toy_task(classes=3, per_class=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(classes, 1, size, size, generator=g)
    images = prototypes.repeat_interleave(per_class, 0) + 0.1 * torch.randn(classes * per_class, 1, size, size, generator=g)
    return LabelledImages(images, torch.arange(classes).repeat_interleave(per_class), [f"c{i}" for i in range(classes)])


def test_warm_start_scores_the_meta_population_first_and_both_spend_the_budget():
    torch.manual_seed(0)
    supernet = SuperNet(TINY, ways=5)
    state = toy_meta_state()
    net, head = task_network(supernet, 3)
    assert head == "zero" and net.head_weight.shape == (3, 8) and not net.head_weight.detach().any()
    adapter = TaskAdapter(net, inner_lr=0.4)
    tasks = scoring_tasks(toy_task(), tasks=2, shots=2, queries=3)
    assert tasks[0].shape == (2, 6, 1, 8, 8) and tasks[3].shape == (2, 9)
    config = adaptation_evolution_config(SearchConfig(**state["config"]), scorings=9)
    assert config.population_size == 4 and not config.rescore_population
    before = {k: v.clone() for k, v in state["predictor"]["model"].items()}

    warm = search_architecture(Scorer.on_tasks(adapter, tasks, 2), TINY, config, 9, seed=0, meta_state=state)
    scratch = search_architecture(Scorer.on_tasks(adapter, tasks, 2), TINY, config, 9, seed=0)
    assert len(warm.scored) == len(scratch.scored) == 9
    best_first = sorted(state["population"], key=lambda m: -m["score"])
    assert [s["arch"] for s in warm.scored[:4]] == [m["arch"] for m in best_first]
    assert warm.predictor_used and not scratch.predictor_used
    assert all(s["predicted"] is not None for s in warm.scored[4:])  # screened by the meta-predictor
    random_start = EvolutionarySearch(TINY, config, seed=0).initial_population()
    assert [Architecture.from_dict(s["arch"]) for s in scratch.scored[:4]] == random_start
    assert warm.best_score == max(s["score"] for s in warm.scored)
    for k, v in state["predictor"]["model"].items():  # the meta-predictor is not refitted
        assert torch.equal(v, before[k])
    # more population than the meta-population: topped up from the meta-archive, best first
    assert len(meta_population(state, TINY, 6)) == 6


PLAIN = Preprocessing(image_size=8, channels=1, invert=False)


def test_adapt_leaves_the_meta_weights_alone_and_is_deterministic():
    torch.manual_seed(0)
    supernet = SuperNet(TINY, ways=3)
    weights = {k: v.clone() for k, v in supernet.state_dict().items()}
    task = toy_task(per_class=8)
    train, val = split_image_folder(task, 0.25, seed=0)
    search, tuning = TaskSearchConfig(scorings=4, tasks_per_score=1), FinetuneConfig(steps=20, lr=0.01)
    a = adapt(supernet, MetaConfig(), train, val, PLAIN, search, tuning, toy_meta_state(), seed=3)
    b = adapt(supernet, MetaConfig(), train, val, PLAIN, search, tuning, toy_meta_state(), seed=3)
    assert a.head == "meta"  # the task has the checkpoint's 3 ways: the meta-learned head is kept
    assert (a.arch, a.val_acc, a.val_acc_transductive, a.search.scored) == (b.arch, b.val_acc, b.val_acc_transductive,
                                                                            b.search.scored)
    assert all(torch.equal(x, y) for x, y in zip(a.model.net.state_dict().values(), b.model.net.state_dict().values()))
    for k, v in supernet.state_dict().items():
        assert torch.equal(v, weights[k]), k
    with pytest.raises(SettingsError, match="no search state .* --search.warm_start false"):
        adapt(supernet, MetaConfig(), train, val, PLAIN, search, tuning, None)
    with pytest.raises(SettingsError, match="--search.scorings must be an integer >= 2"):
        TaskSearchConfig(scorings=1)


def test_adapt_with_a_given_architecture_searches_nothing_and_saves_what_it_measured():
    torch.manual_seed(0)
    supernet = SuperNet(TINY, ways=3)
    task = toy_task(per_class=6)
    train, val = split_image_folder(task, 0.25, seed=0)
    arch = Architecture(("conv3x3", "max_pool3x3"), (8, 4))
    result = adapt(supernet, MetaConfig(), train, val, PLAIN, tuning=FinetuneConfig(steps=10), arch=arch)
    assert result.arch == arch and not result.searched and result.search is None
    # the saved network, each held-out image alone, gives the accuracy reported
    predictions = result.model.logits(val.images, batch_size=1).argmax(-1)
    assert float((predictions == val.labels).float().mean()) == result.val_acc
    assert result.model.class_names == list(task.class_names)


def test_the_default_fine_tuning_is_20_sgd_steps_at_the_checkpoints_inner_lr():
    torch.manual_seed(0)
    supernet = SuperNet(TINY, ways=3)
    train, val = split_image_folder(toy_task(per_class=6), 0.25, seed=0)
    arch = Architecture(("conv3x3", "max_pool3x3"), (8, 4))

    def weights(tuning: FinetuneConfig, meta: MetaConfig = MetaConfig(inner_lr=0.3)) -> tuple[FinetuneConfig, list]:
        result = adapt(supernet, meta, train, val, PLAIN, tuning=tuning, arch=arch)
        return result.finetune, list(result.model.net.state_dict().values())

    ran, default = weights(FinetuneConfig())
    assert (ran.optimizer, ran.steps, ran.lr, ran.batch_size) == ("sgd", 20, 0.3, None)
    # the same as spelling it out: SGD at inner_lr, 20 steps, every train image in each step
    _, spelled = weights(FinetuneConfig(steps=20, lr=0.3, optimizer="sgd", batch_size=len(train.labels)))
    assert all(torch.equal(a, b) for a, b in zip(default, spelled))
    _, other_lr = weights(FinetuneConfig(), MetaConfig(inner_lr=0.2))  # the step size is the checkpoint's
    assert not all(torch.equal(a, b) for a, b in zip(default, other_lr))
    with pytest.raises(SettingsError, match="--finetune.optimizer adam needs --finetune.lr"):
        FinetuneConfig(optimizer="adam")


def test_the_minimum_images_per_class_is_the_one_the_error_names():
    few = toy_task(classes=3, per_class=2)
    check_images_per_class(few, searched=False)  # 2 suffice for a given architecture
    with pytest.raises(SettingsError, match=r"class 'c0' has 2 image\(s\); adapting needs at least 3 per class"):
        check_images_per_class(few, searched=True)
    check_images_per_class(toy_task(classes=3, per_class=3), searched=True)
    train, val = split_image_folder(toy_task(classes=3, per_class=3), 0.25, seed=0)  # 2 train, 1 held out each
    assert scoring_tasks(train, tasks=1, shots=5, queries=5)[3].shape == (1, 3)


def test_cli_input_errors_are_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"junk")
    # a torch file with a checkpoint's first keys but not Lightning's: refused before the images are decoded
    stub = tmp_path / "stub.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"image_size": 14, "image_channels": 1}}, stub)
    folder = write_shapes(tmp_path / "task", per_class=2)
    (folder / "disc" / "01.png").unlink()
    broken = write_shapes(tmp_path / "broken", per_class=3)
    (broken / "hbars" / "02.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "none.ckpt"), folder], "none.ckpt: no such file"),
        ([str(junk), tmp_path / "nowhere"], "image folder not found: " + str(tmp_path / "nowhere")),
        ([str(junk), folder], f"class folder {folder / 'disc'} has 1 image; every class needs at least 2"),
        ([str(junk), tmp_path / "empty"], "has no class folders"),
        ([str(junk), broken], "cannot be loaded with torch.load(weights_only=True): truncated, damaged or not a torch checkpoint"),
        ([str(stub), broken], f"{stub} is not a checkpoint written by train.py"),
        ([str(stub), broken, "--search.scorings", "1"], "--search.scorings must be an integer >= 2, got 1"),
        ([str(stub), broken, "--budget", "4"], "--budget is now --search.scorings"),
        ([str(stub), broken, "--trainer.accelerator", "tpu"], "--trainer.accelerator must be auto, cpu, gpu or cuda, got 'tpu'"),
    ]
    for (ckpt, root, *extra), message in cases:
        assert run_main(lambda: adapt_cli.main(["--ckpt_path", ckpt, "--data.root", str(root), *extra])) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (message, err)


def test_accelerator_rule_of_every_command():
    """``--trainer.accelerator``: ``auto`` takes CUDA where there is one; asking for a GPU where
    torch sees none is a one-line error."""
    assert device_for("cpu") == torch.device("cpu")
    assert device_for("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SettingsError, match="--trainer.accelerator=gpu: no CUDA GPU was found on this machine; "
                                                "use --trainer.accelerator=cpu"):
            device_for("gpu")


@pytest.mark.slow
def test_adapt_py_exits_1_with_one_line(tmp_path):
    """The same, as a user runs it: a subprocess, exit status 1, one line, no traceback."""
    ckpt = tmp_path / "stub.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, ckpt)
    _, err = finish(start("--ckpt_path", str(ckpt), "--data.root", str(tmp_path / "nowhere")), expect=1)
    assert err == f"error: image folder not found: {tmp_path / 'nowhere'}\n"


# -- end to end: train.py writes a search checkpoint, adapt.py adapts it -------------------
@pytest.fixture(scope="module")
def search_checkpoint(tmp_path_factory):
    from tests.test_train import run

    out = tmp_path_factory.mktemp("meta")
    run("train.py", *SEARCH, *SYNTHETIC, f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.logger.init_args.name=search", "--trainer.max_epochs=2", "--test=false")
    return out / "search" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_adapt_warm_and_scratch_on_an_image_folder(search_checkpoint, tmp_path):
    folder = write_shapes(tmp_path / "shapes", per_class=8)
    plain = ["--ckpt_path", str(search_checkpoint), "--data.root", str(folder), "--finetune.steps", "40",
             "--seed_everything", "0"]
    common = [*plain, "--search.on_task", "true", "--search.scorings", "6"]
    procs = {
        "given": start(*plain, "--out", str(tmp_path / "given.json")),
        "warm": start(*common, "--out", str(tmp_path / "warm.json")),
        "scratch": start(*common, "--search.warm_start", "false", "--out", str(tmp_path / "scratch.json")),
    }
    checkpoint = torch.load(search_checkpoint, weights_only=True)
    meta = next(v for k, v in checkpoint["callbacks"].items() if "EvolutionCallback" in k)
    # by default the checkpoint's architecture (the meta-search's best) is adapted, unsearched
    out, _ = finish(procs["given"])
    given = json.loads((tmp_path / "given.json").read_text())
    best = json.loads((search_checkpoint.parent / "best_arch.json").read_text())
    assert given["searched"] is False and Architecture.from_dict(given["arch"]) == Architecture.from_dict(best), out
    assert "adapt: the checkpoint's architecture, fine-tune in" in out
    results = {}
    for mode in ("warm", "scratch"):
        out, _ = finish(procs[mode])
        line = next(line for line in out.splitlines() if line.startswith("adapt:"))
        match = LINE.match(line)
        assert match, out
        kind, scorings, acc, batch_acc, classes, n_val, arch = match.groups()
        assert kind == {"warm": "warm-start", "scratch": "from-scratch"}[mode]
        assert (int(scorings), int(classes), int(n_val)) == (6, 4, 8)
        result = results[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
        assert {"arch", "val_acc", "val_acc_transductive", "search_seconds", "finetune_seconds", "warm_start",
                "scorings", "seed", "model"} <= set(result)
        assert result["warm_start"] is (mode == "warm") and result["scorings"] == 6 and result["seed"] == 0
        assert result["val_acc_transductive"] == pytest.approx(float(batch_acc) / 100, abs=1e-4)
        assert Path(result["model"]) == tmp_path / f"{mode}.model.pt" and Path(result["model"]).is_file()
        assert str(Architecture.from_dict(result["arch"])) == arch
        assert result["val_acc"] == pytest.approx(float(acc) / 100, abs=1e-4)
        assert result["val_acc"] >= 0.5  # chance is 0.25: the shapes are learnt
        assert result["search_seconds"] > 0 and result["finetune_seconds"] > 0
        assert result["head"] == "zero"  # 4 classes, a 3-way checkpoint
        print(mode, line)
    assert results["warm"]["scorings"] == results["scratch"]["scorings"] == 6
    best_first = [m["arch"] for m in sorted(meta["population"], key=lambda m: -m["score"])]
    assert [s["arch"] for s in results["warm"]["scored"][: len(best_first)]] == best_first
