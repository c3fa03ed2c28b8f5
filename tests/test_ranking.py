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


RANKINGS = sorted((ROOT / "bench" / "ranking" / "v1").glob("omniglot_5w1s_*.json"))


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
