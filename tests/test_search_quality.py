"""The search's levers for ranking architectures well: scoring tasks with more queries, a
SuperNet warm-up before the first generation, and the sampling rule, through train.py."""
import json
from types import SimpleNamespace

import pytest
import torch

from callbacks.evolution import EvolutionCallback
from lightning_metanas.search_config import SearchConfig
from lightning_metanas.search_space import Architecture
from tests.helpers import scoring_callback, synthetic_data
from tests.test_train import SEARCH, SYNTHETIC, logs, run


def test_scoring_tasks_take_score_queries_and_match_validation_tasks_otherwise():
    data = synthetic_data()
    trainer = SimpleNamespace(datamodule=data)
    module = SimpleNamespace(device=torch.device("cpu"))
    plain = EvolutionCallback(SearchConfig(tasks_per_score=4, score_queries=None, tournament_size=2, population_size=4))
    support_x, support_y, query_x, query_y = plain.scoring_tasks(trainer, module)
    val = data.task_dataset("val")
    assert torch.equal(support_x[2], val[2].support_x) and torch.equal(query_y[3], val[3].query_y)

    more = EvolutionCallback(SearchConfig(tasks_per_score=9, score_queries=5, tournament_size=2, population_size=4))
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
    callback, trainer, module = scoring_callback()
    a, b, c = (Architecture(ops, (8, 8)) for ops in (("conv3x3", "skip"), ("skip", "conv3x3"), ("conv3x3", "conv3x3")))
    scorer = callback.scorer_for(trainer, module)
    first = scorer([a, b])
    assert scorer.real_scorings == 2
    second = callback.scorer_for(trainer, module)([b, c, a])
    assert callback.scorer is scorer and scorer.real_scorings == 1  # only c is new at this step
    assert second[0] == first[1] and second[2] == first[0]
    assert callback.score_sharded(trainer, module, [c]) == [scorer.accuracies[c]]  # the same as scoring afresh
    trainer.global_step = 6  # the weights moved: everything is scored again
    again = callback.scorer_for(trainer, module)
    again([a, b])
    assert again is not scorer and again.real_scorings == 2


def test_size_weighted_discounts_by_the_share_of_the_largest_subnet():
    from lightning_metanas.scoring import size_weighted

    assert size_weighted(0.8, 100, 400, 0.5) == 0.4  # 0.8 * (1/4) ** 0.5
    assert size_weighted(0.8, 400, 400, 0.1) == 0.8  # the largest subnet keeps its accuracy
    assert size_weighted(0.7, 3, 400, 0.0) == 0.7  # no prior: the accuracy itself
    small, big = size_weighted(0.9, 10_000, 500_000, 0.1), size_weighted(0.85, 300_000, 500_000, 0.1)
    assert big > small  # 0.85 on a big net now beats 0.9 on a net 30x smaller


def test_largest_subnet_is_the_widest_deepest_of_the_costliest_op():
    from lightning_metanas.search_space import SearchSpace
    from lightning_metanas.supernet import SuperNet
    import random

    space = SearchSpace()
    supernet = SuperNet(space, ways=5)
    largest = supernet.largest_num_parameters()
    assert largest == supernet.num_parameters(Architecture(("conv5x5",) * 5, (64,) * 5))
    rng = random.Random(0)
    assert all(supernet.num_parameters(space.sample(rng)) <= largest for _ in range(200))


def test_size_prior_scales_every_score_the_search_keeps():
    from lightning_metanas.scoring import size_weighted

    archs = [Architecture(ops, (8, 8)) for ops in (("conv3x3", "skip"), ("skip", "skip"), ("conv3x3", "conv3x3"))]
    plain, trainer, module = scoring_callback(size_prior=0.0)
    accuracies = plain.scorer_for(trainer, module)(archs)
    prior, trainer, _ = scoring_callback(size_prior=0.5)
    scores = prior.scorer_for(trainer, module)(archs)  # the same module: the same weights
    largest = module.supernet.largest_num_parameters()
    assert largest == module.supernet.num_parameters(archs[2])
    for arch, acc, score in zip(archs, accuracies, scores):
        assert score == size_weighted(acc, module.supernet.num_parameters(arch), largest, 0.5)
    assert scores[2] == accuracies[2] and scores[1] < accuracies[1]  # skip-only: a fraction of the params


def test_negative_size_prior_is_refused():
    from lightning_metanas.evolution import EvolutionSettingsError

    with pytest.raises(EvolutionSettingsError, match="search.size_prior must be >= 0"):
        SearchConfig(size_prior=-0.1)


def test_search_quick_default_warms_up_then_runs_every_generation_at_once_then_trains_the_best(tmp_path):
    """configs/search_quick.yaml as shipped (sandwich warm-up, all generations at one epoch's
    end, 5 query images per scoring task, size prior), on small synthetic data."""
    proc = run("train.py", "--config", "configs/search_quick.yaml", *SYNTHETIC, *logs(tmp_path, "quick"),
        "--trainer.max_epochs=3", "--search.warmup_epochs=1", "--search.generations=3",
        "--search.generations_per_epoch=3", "--search.tasks_per_score=4", "--search.score_queries=3",
        "--search.population_size=4", "--search.offspring=2", "--search.pool_size=6",
        "--search.tournament_size=2", "--search.predictor.min_archive=6")
    run_dir = tmp_path / "quick" / "version_0"
    history = json.loads((run_dir / "checkpoints" / "search_history.json").read_text())
    assert [h["generation"] for h in history] == [0, 1, 2]
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    header = rows[0]
    epochs_with_search = {r[header.index("epoch")] for r in rows[1:] if r[header.index("search/generation")]}
    assert epochs_with_search == {"1"}  # after the warm-up epochs 0 and 1, never again
    best = Architecture.from_dict(json.loads((run_dir / "checkpoints" / "best_arch.json").read_text()))
    assert best == Architecture.from_dict(history[-1]["best_arch"])
    # explained when the search ended, on its weights and tasks: the best's score is the search's
    why = json.loads((run_dir / "checkpoints" / "why.json").read_text())
    scored = json.loads((run_dir / "checkpoints" / "scored.json").read_text())
    assert Architecture.of(why["arch"]) == best and len(why["layers"]) == best.depth
    assert why["score"] == pytest.approx(history[-1]["best_score"]) and why["cost"]["tasks"] == 4
    assert why["front"]["scored"] == len(scored["archive"])
    assert f"search: why.json: {why['cost']['candidates']} architectures" in proc.stdout
    assert "<h2>Why this architecture" in (run_dir / "report.html").read_text()
    from lightning_metanas.checkpoints import read_checkpoint

    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")  # epoch 2: the best alone
    assert Architecture.from_dict(last["evaluated_arch"]) == best


def test_adapt_scores_equal_the_meta_searchs_for_the_same_architecture_tasks_and_prior():
    """adapt.py's search and the meta-search score with one scorer: on the same tasks, with the
    same weights and size prior, the same architectures get the same scores."""
    from lightning_metanas.adaptation import task_network, task_scorer
    from lightning_metanas.maml import TaskAdapter

    callback, trainer, module = scoring_callback(size_prior=0.3)
    archs = [Architecture(ops, (8, 8)) for ops in (("conv3x3", "skip"), ("skip", "skip"), ("conv3x3", "conv3x3"))]
    meta = callback.scorer_for(trainer, module)(archs)
    net, head = task_network(module.supernet, 3)  # the task has the checkpoint's ways: its head is kept
    assert head == "meta"
    tasks = callback.scoring_tasks(trainer, module)
    on_task = task_scorer(TaskAdapter.from_config(net, module.meta), module.supernet, tasks,
                          module.meta.eval_inner_steps, 0.3)(archs)
    assert on_task == meta and len(set(meta)) == 3
