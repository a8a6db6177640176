"""Spearman's rho between each rung's FID ranking and the final ranking, on hand-built histories."""
import pytest

from sweep.report.analyse import rank_fidelity


def test_identical_ranking_is_one_and_reversed_is_minus_one():
    histories = {
        "a": {100: 50.0, 200: 90.0, 300: 10.0},
        "b": {100: 60.0, 200: 80.0, 300: 20.0},
        "c": {100: 70.0, 200: 70.0, 300: 30.0},
        "d": {100: 80.0, 200: 60.0, 300: 40.0},
    }
    result = rank_fidelity(histories)
    assert [(r.step, r.n, r.rho) for r in result] == [(100, 4, pytest.approx(1.0)), (200, 4, pytest.approx(-1.0))]


def test_one_swap_of_four_by_hand():
    # rung ranks 1,2,3,4 vs final ranks 2,1,3,4: d^2 = 1+1 = 2, rho = 1 - 6*2 / (4*15) = 0.8
    histories = {"a": {1: 1.0, 2: 2.0}, "b": {1: 2.0, 2: 1.0}, "c": {1: 3.0, 2: 3.0}, "d": {1: 4.0, 2: 4.0}}
    assert rank_fidelity(histories)[0].rho == pytest.approx(0.8)


def test_only_trials_that_reached_the_end_count_and_pruned_ones_are_ignored():
    histories = {
        "a": {100: 1.0, 200: 1.0},
        "b": {100: 2.0, 200: 2.0},
        "c": {100: 3.0, 200: 3.0},
        "pruned": {100: 0.5},
    }
    (rung,) = rank_fidelity(histories)
    assert rung.n == 3 and rung.rho == pytest.approx(1.0)


def test_too_few_finishers_ties_and_empty_give_na_not_a_crash():
    two = rank_fidelity({"a": {1: 1.0, 2: 1.0}, "b": {1: 2.0, 2: 2.0}, "c": {1: 3.0}})
    assert two[0].rho is None and two[0].n == 2 and "n/a" in two[0].label()
    ties = rank_fidelity({"a": {1: 5.0, 2: 1.0}, "b": {1: 5.0, 2: 2.0}, "c": {1: 5.0, 2: 3.0}})
    assert ties[0].rho is None and "tie" in ties[0].reason
    assert rank_fidelity({}) == []
    assert rank_fidelity({"a": {1: float("nan"), 2: 1.0}, "b": {2: 2.0}}) == []


def test_explicit_final_step_when_no_trial_reached_it_yet():
    running = {"a": {1: 1.0, 2: 1.0}, "b": {1: 2.0, 2: 2.0}, "c": {1: 3.0, 2: 3.0}}
    assert all(r.rho is None and r.n == 0 for r in rank_fidelity(running, final_step=3))
