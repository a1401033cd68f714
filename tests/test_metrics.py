"""Hand-computed checks of the QA metrics and the bootstrap."""

import math

import pytest

from slm_ray.evaluation.metrics import (
    aggregate,
    bootstrap_ci,
    exact_match,
    match,
    normalize_answer,
    passages_with_answer,
    reciprocal_rank,
    retrieval_recall,
    score_example,
    token_f1,
    token_recall,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Cat!", "cat"),
        ("an apple", "apple"),
        ("banana", "banana"),
        ("A theory of the atom", "theory of atom"),
        ("Anthem, thereafter", "anthem thereafter"),
        ("  U.S.A.\t(1901) ", "usa 1901"),
        ("Wilhelm Conrad Röntgen", "wilhelm conrad röntgen"),  # accents kept, as in SQuAD
        ("Élan — vital", "élan — vital"),  # non-ASCII punctuation kept, as in SQuAD
        ("", ""),
        ("The", ""),
    ],
)
def test_normalize_answer_matches_squad(text, expected):
    assert normalize_answer(text) == expected


def test_token_recall_partial_overlap():
    assert token_recall("Röntgen won it", ["Wilhelm Conrad Röntgen"]) == pytest.approx(1 / 3)


def test_token_recall_takes_best_gold():
    golds = ["Wilhelm Conrad Röntgen", "Röntgen"]
    assert token_recall("Röntgen won it", golds) == 1.0


def test_token_recall_counts_duplicates_by_multiplicity():
    # gold tokens: new, new, york (3); the prediction has one "new" and "york": 2 of 3.
    assert token_recall("new york", ["New New York"]) == pytest.approx(2 / 3)
    assert token_recall("new new york", ["New New York"]) == 1.0
    # repeating a token in the prediction does not count it twice against the gold.
    assert token_recall("york york york", ["New York"]) == pytest.approx(1 / 2)


def test_empty_prediction_scores_zero():
    golds = ["Paris"]
    assert token_recall("", golds) == 0.0
    assert exact_match("", golds) == 0.0
    assert token_f1("", golds) == 0.0
    assert match("", golds) == 0.0


def test_empty_gold_answers_are_skipped():
    assert token_recall("Paris", ["The", "", "Paris"]) == 1.0
    for metric in (token_recall, exact_match, token_f1, match):
        assert metric("the", ["The", "!"]) == 0.0
        assert metric("Paris", []) == 0.0


def test_a_bare_string_as_gold_answers_is_rejected():
    with pytest.raises(TypeError):
        token_recall("Paris", "Paris")


def test_token_f1_known_value():
    # prediction -> "capital of france is paris" (5 tokens), gold -> "paris france" (2 tokens).
    # overlap = {paris, france} = 2, so P = 2/5, R = 2/2 = 1,
    # F1 = 2 * (2/5) * 1 / (2/5 + 1) = (4/5) / (7/5) = 4/7 ≈ 0.5714.
    assert token_f1("The capital of France is Paris.", ["Paris, France"]) == pytest.approx(4 / 7)


def test_token_f1_takes_best_gold():
    # against "paris": P = 1/5, R = 1, F1 = (2/5) / (6/5) = 1/3; the second gold gives 4/7.
    golds = ["Paris", "Paris, France"]
    assert token_f1("The capital of France is Paris.", golds) == pytest.approx(4 / 7)


def test_exact_match_on_normalised_strings():
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("the Eiffel tower in Paris", ["Eiffel Tower"]) == 0.0
    assert exact_match("Louvre", ["Eiffel Tower", "the louvre"]) == 1.0


def test_match_respects_token_boundaries():
    assert match("1901", ["1"]) == 0.0
    assert match("in 1901.", ["1901"]) == 1.0
    assert match("It was Marie Curie, in Paris", ["Curie", "Pierre Curie"]) == 1.0
    # the gold tokens must be contiguous and in order.
    assert match("Conrad Wilhelm Röntgen", ["Wilhelm Conrad Röntgen"]) == 0.0


def test_retrieval_recall():
    passages = ["Röntgen was awarded the prize in 1901.", "Marie Curie won in 1903."]
    assert retrieval_recall(passages, ["1903"]) == 1.0
    assert retrieval_recall(passages, ["190"]) == 0.0
    assert retrieval_recall(passages, ["1911", "the Prize"]) == 1.0
    assert retrieval_recall([], ["1903"]) == 0.0


def test_readme_worked_example():
    prediction = "The first prize went to Wilhelm Röntgen in 1901"
    golds = ["Wilhelm Conrad Röntgen"]
    # normalised prediction: first prize went to wilhelm röntgen in 1901 (8 tokens);
    # gold: wilhelm conrad röntgen (3 tokens); overlap {wilhelm, röntgen} = 2.
    # P = 2/8 = 1/4, R = 2/3, F1 = 2 * (1/4) * (2/3) / (1/4 + 2/3) = (1/3) / (11/12) = 4/11.
    assert normalize_answer(prediction).split() == [
        "first", "prize", "went", "to", "wilhelm", "röntgen", "in", "1901",
    ]
    assert token_recall(prediction, golds) == pytest.approx(2 / 3)
    assert exact_match(prediction, golds) == 0.0
    assert match(prediction, golds) == 0.0
    assert token_f1(prediction, golds) == pytest.approx(4 / 11)


def test_score_example_keys():
    closed_book = score_example("Paris", ["Paris"], None)
    assert closed_book == {"token_recall": 1.0, "exact_match": 1.0, "f1": 1.0, "match": 1.0}
    retrieved = score_example("Paris", ["Paris"], ["Berlin is in Germany."])
    assert retrieved["retrieval_recall"] == 0.0
    assert set(retrieved) == set(closed_book) | {"retrieval_recall", "retrieval_mrr"}


def test_reciprocal_rank_of_the_first_answer_bearing_passage():
    passages = ["Berlin is in Germany.", "Lyon is a city.", "Paris is the capital.", "Paris again."]
    assert passages_with_answer(passages, ["Paris"]) == [False, False, True, True]
    assert score_example("x", ["Paris"], passages)["retrieval_mrr"] == pytest.approx(1 / 3)
    assert score_example("x", ["Paris"], passages[2:])["retrieval_mrr"] == 1.0
    assert score_example("x", ["Rome"], passages)["retrieval_mrr"] == 0.0  # none holds it: 0, not missing
    assert reciprocal_rank([]) == 0.0
    assert passages_with_answer(["The Paris."], ["the paris"]) == [True]  # SQuAD normalisation, both sides


def test_bootstrap_ci_contains_mean():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    result = bootstrap_ci(values)
    assert result["n"] == 10
    assert result["mean"] == pytest.approx(0.7)
    assert result["ci_low"] <= result["mean"] <= result["ci_high"]
    assert result["ci_low"] < result["ci_high"]


def test_bootstrap_ci_narrows_with_more_samples():
    small = bootstrap_ci([1.0, 0.0] * 10)
    large = bootstrap_ci([1.0, 0.0] * 1000)
    assert large["ci_high"] - large["ci_low"] < small["ci_high"] - small["ci_low"]


def test_bootstrap_ci_is_deterministic_for_a_seed():
    values = [0.1, 0.5, 0.9, 0.3, 0.0, 1.0, 0.25]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


@pytest.mark.parametrize("value", [0.0, 1.0, 0.5, 0.1])
def test_bootstrap_ci_of_constant_values_collapses(value):
    result = bootstrap_ci([value] * 50)
    assert result["ci_low"] == result["ci_high"] == result["mean"]


def test_bootstrap_ci_edge_sizes():
    assert bootstrap_ci([]) == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    assert bootstrap_ci([0.4]) == {"mean": 0.4, "ci_low": 0.4, "ci_high": 0.4, "n": 1}


def test_bootstrap_ci_chunked_resampling_matches_size():
    # 3000 values x 1000 resamples exceeds one chunk; the interval must still be sensible.
    values = [1.0, 0.0, 0.0] * 1000
    result = bootstrap_ci(values)
    assert result["ci_low"] < 1 / 3 < result["ci_high"]
    assert result["ci_high"] - result["ci_low"] < 0.05


@pytest.mark.parametrize("kwargs", [{"n_resamples": 0}, {"confidence": 1.0}, {"confidence": 0.0}])
def test_bootstrap_ci_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        bootstrap_ci([0.0, 1.0], **kwargs)


def test_aggregate_per_metric():
    rows = [
        score_example("Paris", ["Paris"], None),
        score_example("Lyon", ["Paris"], ["Paris is the capital."]),
        score_example("Paris", ["Paris"], ["Lyon is a city."]),
    ]
    summary = aggregate(rows, n_resamples=200, seed=1)
    assert list(summary) == ["token_recall", "exact_match", "f1", "match", "retrieval_recall", "retrieval_mrr"]
    assert summary["token_recall"]["n"] == 3
    assert summary["token_recall"]["mean"] == pytest.approx(2 / 3)
    assert summary["retrieval_recall"]["n"] == 2
    assert summary["retrieval_recall"]["mean"] == pytest.approx(0.5)
    assert all(math.isfinite(s["ci_low"]) for s in summary.values())
    assert aggregate([]) == {}
