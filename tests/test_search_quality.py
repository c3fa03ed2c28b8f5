"""The search's levers for ranking architectures well: scoring tasks with more queries, a
SuperNet warm-up before the first generation, and the sampling rule, through train.py."""
import json
from types import SimpleNamespace

import torch

from callbacks.evolution import EvolutionCallback
from lightning_metanas.data import EpisodicDataModule
from lightning_metanas.evolution import EvolutionConfig
from lightning_metanas.search_space import Architecture
from tests.test_train import SEARCH, SYNTHETIC, logs, run


def _data(**kwargs) -> EpisodicDataModule:
    data = EpisodicDataModule(dataset="synthetic", image_size=14, ways=3, queries=2, val_tasks=6, **kwargs)
    data.setup("fit")
    return data


def test_scoring_tasks_take_score_queries_and_match_validation_tasks_otherwise():
    data = _data()
    trainer = SimpleNamespace(datamodule=data)
    module = SimpleNamespace(device=torch.device("cpu"))
    plain = EvolutionCallback(EvolutionConfig(tasks_per_score=4, tournament_size=2, population_size=4))
    support_x, support_y, query_x, query_y = plain.scoring_tasks(trainer, module)
    val = data.task_dataset("val")
    assert torch.equal(support_x[2], val[2].support_x) and torch.equal(query_y[3], val[3].query_y)

    more = EvolutionCallback(EvolutionConfig(tasks_per_score=9, score_queries=5, tournament_size=2, population_size=4))
    support_x, support_y, query_x, query_y = more.scoring_tasks(trainer, module)
    assert query_x.shape[:2] == (9, 3 * 5) and support_x.shape[:2] == (9, 3)  # 9 > val_tasks: not capped
    assert torch.equal(query_y[0], torch.arange(3).repeat_interleave(5))


def test_warmup_then_search_with_fair_sampling_and_more_queries(tmp_path):
    run("train.py", *SEARCH, *SYNTHETIC, *logs(tmp_path, "warm"), "--trainer.max_epochs=3",
        "--model.sampling=fair",
        "--search.warmup_epochs=1", "--search.score_queries=3")
    run_dir = tmp_path / "warm" / "version_0"
    history = json.loads((run_dir / "checkpoints" / "search_history.json").read_text())
    assert [h["generation"] for h in history] == [0, 1]  # no generation after the warm-up epoch
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    header = rows[0]
    epochs_with_search = {r[header.index("epoch")] for r in rows[1:] if r[header.index("search/generation")]}
    assert epochs_with_search == {"1", "2"}
    # 4 scoring tasks x 3 classes x 3 queries: every score is a multiple of 1/36
    for entry in history:
        assert abs(entry["best_score"] * 36 - round(entry["best_score"] * 36)) < 1e-4


def test_score_queries_beyond_the_data_stop_the_run_before_training(tmp_path):
    proc = run("train.py", *SEARCH, *SYNTHETIC, *logs(tmp_path, "bad"), "--trainer.max_epochs=1",
               "--search.score_queries=500", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: search.score_queries=500")
    assert not list(tmp_path.glob("bad/version_*/checkpoints/*.ckpt"))


def test_unknown_sampling_rule_is_refused(tmp_path):
    proc = run("train.py", *SYNTHETIC, *logs(tmp_path, "rule"), "--model.sampling=roundrobin", check=False)
    assert proc.returncode != 0 and "sampling" in proc.stderr


def test_architectures_scored_at_the_same_step_are_not_scored_again():
    from lightning_metanas.module import MetaNASModule
    from lightning_metanas.search_space import SearchSpace

    data = _data()
    space = SearchSpace(ops=("conv3x3", "skip"), widths=(8,), depths=(2,))
    module = MetaNASModule(ways=3, image_size=14, search_space=space)
    trainer = SimpleNamespace(datamodule=data, global_step=5, global_rank=0, world_size=1,
                              is_global_zero=True, progress_bar_callback=None)
    callback = EvolutionCallback(EvolutionConfig(tasks_per_score=3, population_size=2, tournament_size=2))
    callback.setup(trainer, module, "fit")
    a, b, c = (Architecture(ops, (8, 8)) for ops in (("conv3x3", "skip"), ("skip", "conv3x3"), ("conv3x3", "conv3x3")))
    first = callback.score(trainer, module, [a, b])
    assert callback.real_scorings == 2
    second = callback.score(trainer, module, [b, c, a])
    assert callback.real_scorings == 1  # only c is new at this step
    assert second[0] == first[1] and second[2] == first[0]
    assert callback._score_fresh(trainer, module, [c]) == [second[1]]  # the same as scoring afresh
    trainer.global_step = 6  # the weights moved: everything is scored again
    callback.score(trainer, module, [a, b])
    assert callback.real_scorings == 2
