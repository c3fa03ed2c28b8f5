"""The evolutionary search and the predictor as plain Python, with a known score function."""
import json
import random
from types import SimpleNamespace

import pytest
import torch

from lightning_metanas.evolution import EvolutionarySearch, EvolutionConfig, EvolutionSettingsError, GenerationRecord
from lightning_metanas.predictor import PerformancePredictor, PredictorConfig
from lightning_metanas.samplers import PopulationSampler
from lightning_metanas.search_space import SearchSpace

SPACE = SearchSpace()


def toy_score(arch):
    """Known optimum: every layer conv5x5 at width 64, five layers deep."""
    ops = sum(op == "conv5x5" for op in arch.ops) / 5
    widths = sum(w / 64 for w in arch.widths) / 5
    return 0.5 * ops + 0.3 * widths + 0.2 * (arch.depth == 5)


def run(config, generations, seed=None, score=toy_score):
    search = EvolutionarySearch(SPACE, config, seed=seed)
    for _ in range(generations):
        archs = search.to_score(search.propose())
        search.accept({a: score(a) for a in archs})
    return search


def test_evolution_beats_random_search_at_equal_budget():
    config = EvolutionConfig(
        population_size=10, offspring=6, pool_size=6, rescore_population=False,
        predictor=PredictorConfig(retrain_every=100),  # no screening here: EA alone
    )
    random_config = EvolutionConfig(**{**vars(config), "strategy": "random"})
    evo, rnd = [], []
    for seed in range(5):
        search = run(config, 15, seed=seed)
        baseline = run(random_config, 15, seed=seed)
        # every scoring is a new architecture, so both spent the same real-scoring budget
        assert len(search.archive) == len(baseline.archive) == 10 + 14 * 6
        evo.append(max(search.archive.values()))
        rnd.append(max(baseline.archive.values()))
    assert sum(evo) / 5 > sum(rnd) / 5 + 0.05, (evo, rnd)


def test_random_strategy_proposes_fresh_uniform_samples_without_the_predictor():
    config = EvolutionConfig(
        population_size=6, offspring=4, pool_size=12, strategy="random",
        predictor=PredictorConfig(min_archive=6),
    )
    search = EvolutionarySearch(SPACE, config, seed=1)
    search.accept({a: toy_score(a) for a in search.to_score(search.propose())})
    for _ in range(6):
        scored_before = set(search.archive)
        proposals = search.propose()
        assert len(proposals) == 4 and not scored_before & set(proposals)
        search.accept({a: toy_score(a) for a in search.to_score(proposals)})
    assert not search.predictor.ready and search.predictor_tau is None and not search.predicted
    # a different seed draws different architectures: proposals come from the search's rng
    other = run(config, 7, seed=2)
    assert set(other.archive) != set(search.archive)


def test_search_finishes_after_the_configured_generations():
    search = run(EvolutionConfig(population_size=6, offspring=3, pool_size=6, generations=4), 3)
    assert not search.finished
    search.accept({a: toy_score(a) for a in search.to_score(search.propose())})
    assert search.finished and search.generation == 4
    assert not run(EvolutionConfig(population_size=6, offspring=3, pool_size=6, generations=None), 20).finished


def test_population_size_and_selection_rules():
    aging = run(EvolutionConfig(population_size=8, offspring=4, pool_size=4, selection="aging"), 5)
    assert len(aging.population) == 8
    assert [m.born for m in aging.population] == sorted(m.born for m in aging.population)
    assert min(m.born for m in aging.population) == 3  # the oldest died first
    tour = run(EvolutionConfig(population_size=8, offspring=4, pool_size=4, selection="tournament"), 5)
    survivors = sorted(m.score for m in tour.population)
    assert survivors == sorted(tour.archive.values())[-8:]  # (mu + lambda): the best survive


def test_history_and_archive_are_deduplicated_and_complete():
    search = run(EvolutionConfig(population_size=6, offspring=3, pool_size=9), 6)
    assert [h.generation for h in search.history] == list(range(6))
    assert len(set(search.archive)) == len(search.archive)
    best = [h.best_score for h in search.history]
    assert best[-1] == search.best().score


def test_accept_returns_the_record_that_history_keeps_logs_and_saves(tmp_path):
    config = EvolutionConfig(population_size=6, offspring=3, pool_size=9, seed=4,
                             predictor=PredictorConfig(min_archive=6, min_tau=-1.0, epochs=20))
    search = EvolutionarySearch(SPACE, config)
    for _ in range(4):
        archs = search.to_score(search.propose())
        ready = search.predictor.ready
        record = search.accept({a: toy_score(a) for a in archs})
        assert record is search.history[-1] and record.generation == search.generation - 1
        assert (record.best_arch, record.best_score) == (search.best().arch, search.best().score)
        assert record.real_scorings == len(archs) and record.predictor_used is ready
        assert record.predictor_tau == search.predictor_tau
    # trusted from the first refit on (min_tau=-1): proposed with the predictor from generation 1
    assert [r.predictor_used for r in search.history] == [False, True, True, True]
    # the checkpoint's form (weights_only) and the JSON form give the same records back
    torch.save(search.state_dict(), tmp_path / "state.pt")
    restored = EvolutionarySearch(SPACE, config)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.history == search.history
    saved = json.loads(json.dumps([r.to_dict() for r in search.history]))
    assert [GenerationRecord.from_dict(r) for r in saved] == search.history
    assert saved[0]["best_arch"] == search.history[0].best_arch.to_dict()
    older = {k: v for k, v in saved[1].items() if k != "predictor_used"}  # a history from before
    assert GenerationRecord.from_dict(older).predictor_used is False
    # the config's seed is the search's seed
    assert run(EvolutionConfig(population_size=6, offspring=3, pool_size=9, seed=4), 2).archive == \
        run(EvolutionConfig(population_size=6, offspring=3, pool_size=9), 2, seed=4).archive


def test_accept_counts_the_real_scorings_it_is_told():
    """The callback keeps scores measured under the same weights (callbacks/evolution.py) and
    tells accept how many were new: the one record then says so."""
    search = EvolutionarySearch(SPACE, EvolutionConfig(population_size=4, offspring=2, pool_size=4, tournament_size=2,
                                                       rescore_population=True))
    first = search.accept({a: toy_score(a) for a in search.to_score(search.propose())})
    assert first.real_scorings == 4
    archs = search.to_score(search.propose())
    assert len(archs) == 6  # 4 survivors re-scored + 2 offspring
    second = search.accept({a: toy_score(a) for a in archs}, real_scorings=2)
    assert second.real_scorings == 2 and search.history == [first, second]


def test_predictor_learns_the_ranking_and_screens_offspring():
    config = EvolutionConfig(
        population_size=10, offspring=4, pool_size=24, predictor=PredictorConfig(min_archive=20)
    )
    search = run(config, 8)
    assert search.predictor.ready and search.predictor_tau is not None
    assert search.predictor_tau > 0.3
    # screened offspring have a recorded prediction, and predictions rank like the truth
    assert search.predicted
    predicted = list(search.predicted.items())
    truth = torch.tensor([toy_score(a) for a, _ in predicted])
    pred = torch.tensor([p for _, p in predicted])
    from torchmetrics.functional.regression import kendall_rank_corrcoef

    assert float(kendall_rank_corrcoef(pred, truth)) > 0.3


def test_predictor_does_not_steer_until_enough_data():
    predictor = PerformancePredictor(SPACE, PredictorConfig(min_archive=30))
    rng = random.Random(0)
    archs = [SPACE.sample(rng) for _ in range(20)]
    predictor.fit(archs, [toy_score(a) for a in archs])
    assert not predictor.ready
    more = archs + [SPACE.sample(rng) for _ in range(20)]
    predictor.fit(more, [toy_score(a) for a in more])
    assert predictor.ready


def test_state_dict_round_trip_gives_the_same_next_generation(tmp_path):
    config = EvolutionConfig(population_size=8, offspring=4, pool_size=16, predictor=PredictorConfig(min_archive=12))
    search = run(config, 4)
    path = tmp_path / "state.pt"
    torch.save(search.state_dict(), path)
    restored = EvolutionarySearch(SPACE, config, seed=123)  # seed is overwritten by the state
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.propose() == search.propose()
    assert restored.population == search.population and restored.archive == search.archive


def test_population_sampler_mixes_uniform_samples():
    rng = random.Random(0)
    population = [SPACE.sample(rng) for _ in range(3)]
    sampler = PopulationSampler(SPACE, population, population[0], uniform_share=0.25)
    draws = sampler.sample_batch(rng, 400)
    share = sum(d not in population for d in draws) / 400
    assert 0.15 < share < 0.35
    assert sampler.best() == population[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"population_size": 1}, "search.population_size must be an integer >= 2, got 1"),
        ({"offspring": 8, "pool_size": 4}, r"search.pool_size \(4\) must be >= offspring \(8\)"),
        ({"selection": "roulette"}, "search.selection must be one of"),
        ({"population_size": 4, "tournament_size": 5}, "tournament_size must be between 2 and"),
        ({"uniform_share": 1.5}, r"uniform_share must be in \[0, 1\]"),
        ({"generations": 0}, r"search.generations must be >= 1 or null"),
        ({"strategy": "grid"}, r"search.strategy must be one of \['evolution', 'random'\]"),
    ],
)
def test_bad_evolution_settings_name_the_setting(kwargs, message):
    from lightning_metanas.search_config import SearchConfig

    with pytest.raises(EvolutionSettingsError, match=message):
        SearchConfig(**kwargs)


def test_callback_meta_trains_the_best_architecture_alone_once_the_search_is_over():
    from callbacks.evolution import EvolutionCallback
    from lightning_metanas.module import MetaNASModule
    from lightning_metanas.samplers import FixedSampler

    space = SearchSpace(widths=(8, 16), depths=(2, 3))
    module = MetaNASModule(ways=3, search_space=space)
    from lightning_metanas.search_config import SearchConfig

    callback = EvolutionCallback(SearchConfig(population_size=4, offspring=2, pool_size=2, generations=2, warmup_epochs=0))
    callback.search = EvolutionarySearch(space, callback.config)
    search = callback.search
    search.accept({a: toy_score(a) for a in search.to_score(search.propose())})
    callback.install_sampler(module)
    assert isinstance(module.sampler, PopulationSampler)
    search.accept({a: toy_score(a) for a in search.to_score(search.propose())})
    callback.install_sampler(module)
    assert isinstance(module.sampler, FixedSampler)
    assert module.sampler.arch == search.best().arch == module.evaluated_architecture()
    history = list(search.history)
    trainer = SimpleNamespace(current_epoch=2, max_epochs=4)  # past warmup_epochs
    callback.on_train_epoch_end(trainer=trainer, pl_module=module)  # no generation runs any more
    assert search.history == history and search.generation == 2


def test_without_rescoring_the_answer_is_the_best_ever_scored_even_once_aging_retired_it():
    # a score that falls with the generation: the first population holds the best ever
    def falling(arch, search):
        return toy_score(arch) - 0.2 * search.generation

    for rescore in (False, True):
        search = EvolutionarySearch(SPACE, EvolutionConfig(population_size=4, offspring=4, pool_size=4,
                                                           selection="aging", rescore_population=rescore))
        for _ in range(4):
            archs = search.to_score(search.propose())
            search.accept({a: falling(a, search) for a in archs})
        alive_best = max(m.score for m in search.population)
        if rescore:
            assert search.best().score == alive_best  # current scores: the population decides
        else:
            top = max(search.archive, key=search.archive.get)
            assert top not in {m.arch for m in search.population}  # aging retired it
            assert search.best().arch == top and search.best().score == search.archive[top] > alive_best
            assert [h.best_score for h in search.history] == sorted(h.best_score for h in search.history)
