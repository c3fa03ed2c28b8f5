"""The explanation of a chosen architecture (``explain.py``): its one-edit counterfactuals on a
tiny SuperNet, the layers' importance, budget and space marks, the front and the predictor,
``why.json`` from the search callback, and the report's "why" section."""
import json
import random
import re

import pytest

from lightning_metanas.costs import Budget, CostModel
from lightning_metanas.errors import SettingsError
from lightning_metanas.explain import WhyConfig, counterfactuals, explain, layer_importance, one_edits, write_why
from lightning_metanas.maml import TaskAdapter
from lightning_metanas.meta_config import MetaConfig
from lightning_metanas.predictor import PerformancePredictor, PredictorConfig
from lightning_metanas.report import write_report
from lightning_metanas.scoring import Scorer, score_architectures
from lightning_metanas.search_config import SearchConfig
from lightning_metanas.search_space import Architecture, ArchitectureError, SearchSpace
from tests.helpers import SPACE, scoring_callback, small_supernet, task_batch
from tests.test_report import make_run

ARCH = Architecture(("conv3x3", "sep_conv3x3", "max_pool3x3"), (16, 8, 16))  # 3 layers of SPACE


def tiny(size_prior=0.1, budget=Budget()):
    """A tiny SuperNet's scorer on 3 fixed tasks (1 adaptation step), and its cost model."""
    net = small_supernet()
    adapter = TaskAdapter.from_config(net, MetaConfig())
    tasks = task_batch(3)
    return Scorer.on_tasks(adapter, tasks, 1, size_prior), CostModel(SPACE, 5, 1, 14, budget, supernet=net), adapter, tasks


def constructed(weights):
    """A scorer whose raw accuracy is 0.2 plus ``weights[i]`` when layer ``i`` is conv3x3 (no
    prior): layer ``i`` matters exactly as much as its weight."""
    def accuracy(archs):
        return [0.2 + sum(w for i, w in enumerate(weights) if i < a.depth and a.ops[i] == "conv3x3") for a in archs]
    return Scorer(accuracy, lambda a: 1000, 1000, 0.0)


def test_why_has_one_entry_per_layer_and_alternative():
    scorer, costs, _, _ = tiny()
    why = explain(ARCH, SPACE, scorer, costs, tasks=3, steps=1)
    assert [layer["layer"] for layer in why["layers"]] == [1, 2, 3]
    for layer, op, width in zip(why["layers"], ARCH.ops, ARCH.widths):
        assert [r["op"] for r in layer["ops"]] == list(SPACE.ops)  # 7 operations
        assert [r["width"] for r in layer["widths"]] == list(SPACE.widths)
        assert [r["op"] for r in layer["ops"] if r["chosen"]] == [op]
        assert [r["width"] for r in layer["widths"] if r["chosen"]] == [width]
        assert all(r["feasible"] for r in layer["ops"] + layer["widths"])
    # depth 2 is in the space (3 distinct layers dropped), depth 4 is not (repeats are infeasible)
    drops = [r for r in why["depth"] if r["kind"] == "drop"]
    repeats = [r for r in why["depth"] if r["kind"] == "repeat"]
    assert [r["architecture"] for r in drops] == ["sep_conv3x3@8-max_pool3x3@16", "conv3x3@16-max_pool3x3@16",
                                                  "conv3x3@16-sep_conv3x3@8"]
    assert len(repeats) == 3 and not any(r["feasible"] for r in repeats)
    assert all("4 layers" in r["reason"] and "score" not in r for r in repeats)
    # the chosen one, 6 other ops and 1 other width per layer, 3 drops: each scored once
    assert why["cost"]["candidates"] == why["cost"]["scorings"] == 1 + 3 * 7 + 3
    assert len(counterfactuals(why)) == 25
    assert (why["cost"]["tasks"], why["cost"]["steps"], why["cost"]["size_prior"]) == (3, 1, 0.1)


def test_a_counterfactual_is_the_score_of_that_architecture_and_the_chosen_one_its_own():
    scorer, costs, adapter, tasks = tiny()
    why = explain(ARCH, SPACE, scorer, costs)
    own = score_architectures(adapter, [ARCH], tasks, 1)[0]
    assert why["accuracy"] == own
    chosen = [r for layer in why["layers"] for r in layer["ops"] + layer["widths"] if r["chosen"]]
    assert len(chosen) == 6
    assert all(r["accuracy"] == own and r["score"] == why["score"] and r["delta"] == 0.0 for r in chosen)
    neighbour = Architecture(("conv3x3", "conv5x5", "max_pool3x3"), (16, 8, 16))
    row = counterfactuals(why)[neighbour]
    assert row["accuracy"] == score_architectures(adapter, [neighbour], tasks, 1)[0]
    for r in counterfactuals(why).values():  # the size prior's factor, apart from the raw accuracy
        assert r["prior"] == pytest.approx((costs.params(Architecture.of(r["arch"])) / scorer.largest) ** 0.1)
        assert r["score"] == pytest.approx(r["accuracy"] * r["prior"])
        assert r["delta"] == pytest.approx(r["score"] - why["score"])


def test_layers_are_ranked_by_the_spread_of_their_alternatives_scores():
    why = explain(ARCH, SPACE, constructed([0.01, 0.3, 0.1]), config=WhyConfig(depth_edits=False))
    assert why["importance"] == [2, 3, 1]
    assert [layer["spread"] for layer in why["layers"]] == pytest.approx([0.01, 0.3, 0.1])
    first = why["layers"][0]  # conv3x3 chosen: every other op loses its weight, another width nothing
    assert first["best_alternative"] == "conv3x3@8-sep_conv3x3@8-max_pool3x3@16" and first["margin"] == 0.0
    assert sorted(-r["delta"] for r in first["ops"]) == pytest.approx([0.0] + [0.01] * 6)
    second = why["layers"][1]  # sep_conv3x3 chosen: conv3x3 would add 0.3
    assert second["best_alternative"] == "conv3x3@16-conv3x3@8-max_pool3x3@16"
    assert second["margin"] == pytest.approx(-0.3)
    assert why["depth"] == [] and why["front"] is None and why["predictor"] is None
    layers = [{"layer": 1, "spread": 0.2}, {"layer": 2, "spread": None}, {"layer": 3, "spread": 0.2},
              {"layer": 4, "spread": 0.5}]
    assert layer_importance(layers) == [4, 1, 3, 2]  # ties in layer order, nothing scored last


def test_edits_outside_the_budget_are_scored_and_marked():
    bound = CostModel(SPACE, 5, 1, 14).params(ARCH)
    scorer, costs, _, _ = tiny(budget=Budget(max_params=bound))
    why = explain(ARCH, SPACE, scorer, costs)
    rows = list(counterfactuals(why).values())
    assert why["budget"] == {"max_params": bound} and why["costs"]["within_budget"] is True
    assert all(r["within_budget"] == (r["params"] <= bound) for r in rows)
    assert 0 < sum(not r["within_budget"] for r in rows) < len(rows)


def test_an_architecture_outside_the_space_is_refused_by_name():
    scorer, _, _, _ = tiny()
    with pytest.raises(ArchitectureError, match=r"widths\[1\] = 12 is not in the search space"):
        explain(Architecture(("conv3x3", "conv3x3"), (8, 12)), SPACE, scorer)
    edits = one_edits(SPACE, Architecture(("conv3x3", "skip"), (8, 8)))  # depths 2 and 3: 1 is out
    out = [e for e in edits if e.reason is not None]
    assert [e.label for e in out] == ["drop layer 1", "drop layer 2"]
    assert all("architecture has 1 layers; allowed depths: [2, 3]" in e.reason for e in out)
    assert [str(e.arch) for e in edits if e.kind == "repeat"] == ["conv3x3@8-conv3x3@8-skip@8", "conv3x3@8-skip@8-skip@8"]
    assert len(edits) == 2 * (7 + 2) + 4


def test_front_and_predictor_are_placed_against_the_archive():
    scorer, costs, _, _ = tiny()
    rival = Architecture(("skip", "skip"), (8, 8))
    archive = [{"arch": rival.to_dict(), "architecture": str(rival), "accuracy": 0.99, "score": 0.99,
                "params": 10, "flops": 10}]
    predictor = PerformancePredictor(SPACE, PredictorConfig(min_archive=4, epochs=20))
    archs = [SPACE.sample(random.Random(i)) for i in range(8)]
    predictor.fit(archs, [0.1 * i for i in range(8)])
    why = explain(ARCH, SPACE, scorer, costs, archive=archive, predictor=predictor)
    front = why["front"]
    assert front["scored"] == 2 and front["on_front"] is False and front["dominated_by"] == [str(rival)]
    assert front["rank_by_accuracy"] == 2 and front["next_cheaper_on_front"]["architecture"] == str(rival)
    assert why["predictor"]["estimate"] == pytest.approx(predictor.predict([ARCH])[0])
    assert why["predictor"]["trained_on"] == 8 and why["predictor"]["measured"] == why["score"]


def test_settings_are_refused_with_their_flag():
    with pytest.raises(SettingsError, match="search.why.tasks must be an integer >= 1, got 0"):
        SearchConfig(why={"tasks": 0})
    with pytest.raises(SettingsError, match="search.why.enabled must be true or false"):
        WhyConfig(enabled="yes")
    assert SearchConfig.from_dict(SearchConfig(why=WhyConfig(tasks=5)).to_dict()).why == WhyConfig(tasks=5)


def test_the_search_callback_writes_why_json_with_the_search_scores(tmp_path):
    callback, trainer, module = scoring_callback()
    callback._export_dir = tmp_path
    best = Architecture(("conv3x3", "skip"), (8, 8))
    scorer = callback.scorer_for(trainer, module)
    callback.search.accept(dict(zip([best], scorer([best]))), accuracies=scorer.accuracies)
    why = callback.explain_best(trainer, module)
    assert json.loads((tmp_path / "why.json").read_text()) == json.loads(json.dumps(why))
    assert why["score"] == scorer.score(best)  # the search's own score, on the same tasks and weights
    assert (why["cost"]["candidates"], why["cost"]["scorings"], why["cost"]["tasks"]) == (3, 2, 3)
    fewer, trainer, module = scoring_callback(why=WhyConfig(tasks=2))
    fewer._export_dir = tmp_path / "fewer"
    fewer._export_dir.mkdir()
    fewer.search.accept({best: 0.5})
    tasks = tuple(t[:2] for t in fewer.scoring_tasks(trainer, module))
    assert fewer.explain_best(trainer, module)["accuracy"] == score_architectures(module.adapter, [best], tasks, 3)[0]
    off, trainer, module = scoring_callback(why=WhyConfig(enabled=False))
    off._export_dir = tmp_path / "off"
    off.search.accept({best: 0.5})
    assert off.explain_best(trainer, module) is None and not (tmp_path / "off").exists()


def test_report_shows_the_why_section_only_when_why_json_exists(tmp_path):
    run = make_run(tmp_path)
    assert "Why this architecture" not in write_report(run).read_text()
    scorer, costs, _, _ = tiny()
    why = explain(ARCH, SPACE, scorer, costs, archive=[], tasks=3, steps=1)
    write_why(run / "checkpoints", why)
    page = write_report(run).read_text()
    section = page.split("<h2>Why this architecture", 1)[1].split("</section>", 1)[0]
    table = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    assert len(rows) == 3
    for row, layer in zip(rows, why["layers"]):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert len(cells) == 2 + 7 + 2 + 2  # layer, chosen, 7 ops, 2 widths, spread, importance
        assert cells[-1] == str(why["importance"].index(layer["layer"]) + 1)
        assert cells[1] == f"<code>{layer['op']}@{layer['width']}</code>"
    assert len(re.findall(r'<td class="num best">', table)) == 6  # the chosen op and width of each layer
    ranked = re.findall(r"<li>layer (\d+) ", section)
    assert [int(n) for n in ranked] == why["importance"]
    assert f"{why['cost']['candidates']} architectures, {why['cost']['scorings']} scored" in section


def test_every_ground_truth_neighbour_is_one_of_the_explanations_edits():
    from bench.ground_truth import neighbours

    space = SearchSpace()
    for base in (space.reference(), Architecture(("conv5x5", "conv5x5", "max_pool3x3", "dil_conv3x3", "conv5x5"),
                                                 (64, 48, 48, 64, 64))):
        edits = {e.arch for e in one_edits(space, base) if e.reason is None}
        assert set(neighbours(space, base)) <= edits and base in edits


def entry(label, arch, val, test, ci=0.01, params=100, flops=1000):
    """A ground-truth entry with two seeds' validation and test accuracies."""
    runs = [{"val_acc": v, "test_acc": t, "test_acc_inductive": t, "val_ci95": ci, "ci95": ci, "ci95_inductive": ci}
            for v, t in zip(val, test)]
    return {"label": label, "arch": arch.to_dict(), "params": params, "flops": flops, "runs": runs,
            "val_acc": sum(val) / 2, "test_acc": sum(test) / 2, "test_acc_inductive": sum(test) / 2}


def test_faithfulness_interval_sign_share_and_tau_on_constructed_edits():
    from bench.explain_faithfulness import agreement, edit_record

    base = entry("b", ARCH, (0.80, 0.80), (0.80, 0.80))
    # seeds 0.10 apart: a standard error of 0.05, above the tasks' 0.01 / 1.96 / sqrt 2
    wide = entry("w", ARCH, (0.70, 0.80), (0.70, 0.80), params=50)
    edit = edit_record(base, wide, {"score": 0.5, "accuracy": 0.6}, {"score": 0.4, "accuracy": 0.62}, "op layer 1")
    se_base = 0.01 / 1.96 / 2 ** 0.5
    assert edit["val_acc"] == pytest.approx(-0.05)
    assert edit["val_acc_interval"] == pytest.approx(1.96 * (0.05 ** 2 + se_base ** 2) ** 0.5)
    assert edit["predicted"] == pytest.approx({"score": -0.1, "accuracy": 0.02})
    assert edit["size_rules"]["params"] == -50 and edit["size_rules"]["depth_params"] == -50
    edits = [dict(edit, val_acc=m, val_acc_interval=0.02) for m in (-0.05, 0.03, 0.01, -0.04)]
    result = agreement(edits, [-0.1, -0.2, 0.3, -0.05], "val_acc")
    assert (result["beyond_interval"], result["sign_right"], result["sign_share"]) == (3, 2, 2 / 3)
    assert result["sign_share_all"] == 3 / 4 and result["tau"] == pytest.approx(0.0)
