"""Costs and budgets: exact counts over the whole space, a search that never leaves its budget,
the up-front refusal of a budget nothing meets, and the costs in the search's files."""
import json
import re
import random

import pytest

from lightning_metanas.costs import Budget, BudgetError, CostModel, SpaceCosts
from lightning_metanas.evolution import EvolutionarySearch, EvolutionConfig
from lightning_metanas.predictor import PredictorConfig
from lightning_metanas.search_space import Architecture, SearchSpace
from lightning_metanas.supernet import SuperNet
from lightning_metanas.zero_cost import SIZE_RULES, best_in_budget
from tests.test_train import SYNTHETIC, logs, run

SMALL = SearchSpace(ops=("conv3x3", "conv5x5", "sep_conv3x3", "max_pool3x3", "skip"), widths=(8, 16), depths=(2, 3))


def fake_latency(arch: Architecture) -> float:
    """A deterministic stand-in for a timing: 0.1 ms per layer plus 0.01 per 8 channels."""
    return 0.1 * arch.depth + 0.01 * sum(arch.widths) / 8


def test_space_costs_enumerate_every_architecture_exactly():
    net = SuperNet(SMALL, ways=3)
    table = SpaceCosts(SMALL, net, image_size=14)
    assert len(table) == SMALL.size()
    seen = set()
    for i in range(len(table)):
        arch = table.arch(i)
        seen.add(arch)
        assert table.params[i] == net.num_parameters(arch) and table.flops[i] == net.flops(arch, 14)
        assert table.depth[i] == arch.depth
    assert len(seen) == SMALL.size()  # every index decodes to its own architecture
    latency = table.additive(lambda i, op, c_in, w, size: 0.1 + 0.01 * w / 8, lambda c: 0.0)
    for i in random.Random(0).sample(range(len(table)), 50):
        assert latency[i] == pytest.approx(fake_latency(table.arch(i)))


def test_size_rules_pick_the_first_of_the_whole_space_within_the_budget():
    net = SuperNet(SMALL, ways=3)
    table = SpaceCosts(SMALL, net, image_size=14)
    costs = CostModel(SMALL, 3, 1, 14, Budget(max_params=1500), supernet=net, latency=fake_latency)
    for rule in SIZE_RULES:
        pick = best_in_budget(rule, table, costs)
        feasible = [table.arch(i) for i in range(len(table)) if table.params[i] <= 1500]
        key = {"params": lambda a: net.num_parameters(a), "flops": lambda a: net.flops(a, 14),
               "depth_params": lambda a: (a.depth, net.num_parameters(a)),
               "depth_flops": lambda a: (a.depth, net.flops(a, 14))}[rule]
        assert costs.fits(pick) and key(pick) == max(key(a) for a in feasible)
    timed = CostModel(SMALL, 3, 1, 14, Budget(max_latency_ms=0.25), supernet=net, latency=fake_latency)
    estimate = table.additive(lambda i, op, c_in, w, size: 0.1 + 0.01 * w / 8, lambda c: 0.0)
    pick = best_in_budget("depth_params", table, timed, 0.9 * estimate)  # the screen reads low, as a layer table does
    feasible = [table.arch(i) for i in range(len(table)) if fake_latency(table.arch(i)) <= 0.25]
    assert pick.depth == 2 and fake_latency(pick) <= 0.25
    assert net.num_parameters(pick) == max(net.num_parameters(a) for a in feasible if a.depth == 2)


@pytest.mark.parametrize("budget", [Budget(max_params=1200), Budget(max_flops=60_000),
                                    Budget(max_latency_ms=0.25), Budget(max_params=2000, max_latency_ms=0.3),
                                    Budget(max_latency_vs_reference=0.7)])
def test_search_samples_mutates_and_crosses_over_only_within_the_budget(budget):
    costs = CostModel(SMALL, 3, 1, 14, budget, latency=fake_latency)
    costs.check_feasible()
    config = EvolutionConfig(population_size=6, offspring=4, pool_size=8, crossover_prob=0.7, mutation_prob=0.5,
                             generations=None, predictor=PredictorConfig(min_archive=8, min_tau=-1.0, epochs=20))
    search = EvolutionarySearch(SMALL, config, seed=1, fits=costs.fits)
    proposed = []
    for _ in range(8):  # a made-up score that prefers the costly: the search presses on the bound
        archs = search.to_score(search.propose())
        proposed += archs
        search.accept({a: costs.params(a) / 5000 + 0.1 * random.Random(str(a)).random() for a in archs})
    assert len(proposed) > 20 and all(costs.fits(a) for a in proposed)
    random_search = EvolutionarySearch(SMALL, EvolutionConfig(strategy="random", generations=None), seed=2, fits=costs.fits)
    assert all(costs.fits(a) for a in random_search.fresh(10) + random_search.initial_population())


@pytest.mark.parametrize("budget, message", [
    (Budget(max_params=50), "search.max_params=50: no architecture of the space has so few parameters; the smallest has "),
    (Budget(max_flops=10), "search.max_flops=10: no architecture of the space needs so few multiply-accumulates; the smallest needs "),
    (Budget(max_latency_ms=0.1), "search.max_latency_ms=0.1: the fastest architecture of the space takes 0.220 ms"),
    (Budget(max_latency_vs_reference=0.5), "search.max_latency_vs_reference=0.5: the fastest architecture of the space "
                                           "takes 0.611 x the reference network's time on this machine (0.220 vs 0.360 ms)"),
])
def test_a_budget_nothing_meets_is_refused_naming_the_smallest_feasible_value(budget, message):
    net = SuperNet(SMALL, ways=3)
    with pytest.raises(BudgetError, match=re.escape(message)) as err:
        CostModel(SMALL, 3, 1, 14, budget, supernet=net, latency=fake_latency).check_feasible()
    if budget.max_params:  # the value named is the true minimum, and it is feasible
        smallest = int(str(err.value).rsplit(" ", 1)[1])
        assert smallest == min(SpaceCosts(SMALL, net, 14).params)
        CostModel(SMALL, 3, 1, 14, Budget(max_params=smallest), supernet=net).check_feasible()


def test_a_latency_bound_relative_to_the_reference_is_that_share_of_its_time_on_this_machine():
    """SMALL's reference is conv3x3@16 x 3 (no depth 4, no width 64): 0.36 ms by fake_latency."""
    net = SuperNet(SMALL, ways=3)
    relative = CostModel(SMALL, 3, 1, 14, Budget(max_latency_vs_reference=0.7), supernet=net, latency=fake_latency)
    assert relative.reference_latency_ms == pytest.approx(0.36) and relative.latency_bound() == pytest.approx(0.252)
    archs = [SMALL.sample(random.Random(i)) for i in range(200)]
    assert {relative.fits(a) for a in archs} == {True, False}
    assert all(relative.fits(a) == (fake_latency(a) <= 0.7 * 0.36) for a in archs)
    assert relative.budget_record() == {"max_latency_vs_reference": 0.7, "reference_latency_ms": 0.36,
                                        "latency_bound_ms": 0.252}
    assert "latency_ms" in relative.of(archs[0])
    both = CostModel(SMALL, 3, 1, 14, Budget(max_latency_ms=0.23, max_latency_vs_reference=0.7), supernet=net,
                     latency=fake_latency)
    assert both.latency_bound() == pytest.approx(0.23)  # the tighter of the two
    assert CostModel(SMALL, 3, 1, 14, Budget(max_params=1500), supernet=net, latency=fake_latency).latency_bound() is None
    from lightning_metanas.report import _budget_text
    assert _budget_text(relative.budget_record()) == (
        "× the reference network's time per image ≤ 0.7, 0.252 ms here (the reference: 0.36 ms)")


@pytest.mark.parametrize("value", [0, -3, float("inf"), True, "big"])
def test_a_malformed_bound_names_its_flag(value):
    with pytest.raises(BudgetError, match="search.max_flops must be a number > 0 or null"):
        Budget(max_flops=value)


def test_train_py_searches_within_a_parameter_budget_and_writes_costs_and_the_front(tmp_path):
    run("train.py", "--config", "configs/search_quick.yaml", *SYNTHETIC, *logs(tmp_path, "budget"),
        "--trainer.max_epochs=2", "--search.generations=3", "--search.tasks_per_score=3",
        "--search.score_queries=2", "--search.population_size=4", "--search.offspring=2",
        "--search.pool_size=6", "--search.tournament_size=2", "--search.max_params=1500")
    out = tmp_path / "budget" / "version_0" / "checkpoints"
    scored = json.loads((out / "scored.json").read_text())
    assert scored["budget"] == {"max_params": 1500}
    assert scored["archive"] and all(r["params"] <= 1500 and "flops" in r and "accuracy" in r for r in scored["archive"])
    best = Architecture.from_dict(json.loads((out / "best_arch.json").read_text()))
    net = SuperNet(SearchSpace(widths=(8, 16), depths=(2, 3)), ways=3)
    assert net.num_parameters(best) <= 1500
    front = json.loads((out / "front.json").read_text())
    rows = front["front"]
    assert front["budget"] == {"max_params": 1500} and rows
    for r in rows:  # nothing scored beats a front row on accuracy and both costs
        assert not any(o["accuracy"] >= r["accuracy"] and o["params"] <= r["params"] and o["flops"] <= r["flops"]
                       and (o["accuracy"], o["params"], o["flops"]) != (r["accuracy"], r["params"], r["flops"])
                       for o in scored["archive"])
    test = json.loads((tmp_path / "budget" / "version_0" / "test_result.json").read_text())
    assert Architecture.of(test["arch"]) == best


def test_train_py_refuses_an_unmeetable_budget_before_training(tmp_path):
    proc = run("train.py", "--config", "configs/search_quick.yaml", *SYNTHETIC, *logs(tmp_path, "none"),
               "--trainer.max_epochs=2", "--search.max_flops=100", check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: search.max_flops=100: no architecture of the space needs so few")
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("none/version_*/checkpoints/*.ckpt"))
