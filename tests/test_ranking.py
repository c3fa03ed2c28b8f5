"""Rank agreement statistics, and the committed ranking files against the committed ground truth."""
import json
from pathlib import Path

import pytest

from lightning_metanas.metrics import kendall_tau
from lightning_metanas.ranking import rank_agreement
from lightning_metanas.search_space import Architecture

ROOT = Path(__file__).resolve().parents[1]


def test_rank_agreement_on_a_hand_counted_example():
    # pairs: 5 concordant, 1 discordant -> tau = 4/6; rank differences 0,1,1,0 -> rho = 0.8
    result = rank_agreement([1, 2, 3, 4], [1, 3, 2, 4], top=2)
    assert result["kendall_tau"] == pytest.approx(4 / 6, abs=1e-6)
    assert result["spearman_rho"] == pytest.approx(0.8, abs=1e-6)
    assert result["top1_ground_truth_rank"] == 1
    assert result["top2_overlap"] == 1  # top-2 by score {3, 4}, by truth {2, 4}: index 3 shared


def test_reversed_order_and_constant_scores():
    assert kendall_tau([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert rank_agreement([3, 2, 1], [1, 2, 3])["top1_ground_truth_rank"] == 3
    assert kendall_tau([1, 1, 1], [1, 2, 3]) == 0.0  # no order: no information, not NaN
    with pytest.raises(ValueError, match="equally long"):
        rank_agreement([1, 2], [1])


RANKINGS = sorted((ROOT / "bench" / "ranking").glob("omniglot_5w1s_*.json"))


@pytest.mark.parametrize("path", RANKINGS, ids=[p.stem for p in RANKINGS])
def test_committed_tau_recomputes_from_the_committed_files(path):
    ranking = json.loads(path.read_text())
    truth = {
        Architecture.from_dict(e["arch"]): e["acc"]
        for e in json.loads((ROOT / ranking["ground_truth"]).read_text()) if e.get("seed", 0) == 0
    }
    scores = [e["supernet_score"] for e in ranking["entries"]]
    accs = [truth[Architecture.from_dict(e["arch"])] for e in ranking["entries"]]
    assert len(scores) == ranking["architectures"] >= 24
    assert kendall_tau(scores, accs) == pytest.approx(ranking["kendall_tau"], abs=1e-6)


def test_ranking_table_reads_a_picks_accuracy_from_the_ground_truth_file_now(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from ranking_table import known, pick_cell, picks_mean

    truth_file = tmp_path / "gt.json"
    truth_file.write_text(json.dumps([
        {"label": "conv3x3@32-skip@32-skip@32", "acc": 0.5, "seed": 0, "group": "stratified"},
        {"label": "conv5x5@64-conv5x5@64-conv5x5@64", "acc": 0.9, "seed": 0, "group": "extra"},
        {"label": "conv5x5@64-conv5x5@64-conv5x5@64", "acc": 0.1, "seed": 1, "group": "extra"},
    ]))
    accs = known(truth_file)
    assert accs == {"conv3x3@32-skip@32-skip@32": 0.5, "conv5x5@64-conv5x5@64-conv5x5@64": 0.9}
    truth = [0.95, 0.8, 0.5, 0.2]
    assert pick_cell({"label": "conv5x5@64-conv5x5@64-conv5x5@64"}, accs, truth) == \
        "`conv5x5@64-conv5x5@64-conv5x5@64`: 90.00 (25% above)"
    assert pick_cell({"label": "skip@32-skip@32-skip@32"}, accs, truth).endswith("not trained alone yet")
    trained = [{"label": "conv3x3@32-skip@32-skip@32"}, {"label": "conv5x5@64-conv5x5@64-conv5x5@64"}]
    assert picks_mean(trained, accs) == "70.00"
    assert picks_mean(trained + [{"label": "skip@32-skip@32-skip@32"}], accs) == "—"


def test_size_prior_cross_validation_recovers_a_planted_strength_out_of_sample():
    """Scores built as truth / params**0.2 are ordered exactly by truth once weighted with 0.2:
    the strength chosen on half A must be 0.2 and give tau 1 on half B; a method whose scores
    already order the truth must keep the prior off (ties go to the smallest strength)."""
    import random
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from size_prior_cv import cross_validate

    rng = random.Random(1)
    truth = [rng.uniform(0.2, 0.95) for _ in range(20)]
    params = [rng.randint(1_000, 400_000) for _ in range(20)]
    planted = ([t / p ** 0.2 for t, p in zip(truth, params)], truth, params)
    plain = (list(truth), truth, params)
    result = cross_validate({"planted": planted, "plain": plain}, splits=5, seed=0,
                            strengths=[0.0, 0.1, 0.2, 0.3])
    assert result["planted"]["own"] == [0.2] * 5
    assert result["planted"]["tau_own"] == [pytest.approx(1.0)] * 5
    assert all(t < 1.0 for t in result["planted"]["tau_none"])
    assert result["plain"]["own"] == [0.0] * 5
    assert result["plain"]["tau_none"] == [pytest.approx(1.0)] * 5
    # each method's "others" choice is the other one's: the plain method is hurt by 0.2
    assert result["plain"]["others"] == [0.2] * 5
    assert all(t < 1.0 for t in result["plain"]["tau_others"])
