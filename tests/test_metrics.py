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


def test_blank_gold_answers_are_skipped():
    assert token_recall("Paris", ["", "  ", "Paris"]) == 1.0
    for metric in (token_recall, exact_match, token_f1, match):
        assert metric("the", ["", " \t"]) == 0.0
        assert metric("Paris", []) == 0.0


# --- golds that SQuAD's normalisation empties (issue 19, class 1) ----------------------------------------

SCORERS = {"token_recall": token_recall, "exact_match": exact_match, "f1": token_f1, "match": match}


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("The The", "The The"),  # the band: the example
        ("the the", "The The"),
        ("The The.", "The The"),  # a model's full stop
        ("?", "?"),
        ("...", "..."),
        ("A", "A"),  # vitamin A
        ("An", "an"),
        ("The", "The"),
    ],
)
def test_a_perfect_answer_to_a_gold_that_normalisation_empties_scores_one(prediction, gold):
    assert {name: score(prediction, [gold]) for name, score in SCORERS.items()} == dict.fromkeys(SCORERS, 1.0)


def test_a_gold_that_normalisation_empties_still_tells_right_from_wrong():
    golds = ["The The"]
    assert score_example("The The is the band that made it", golds) == {
        "token_recall": 1.0, "exact_match": 0.0, "f1": pytest.approx(2 * (2 / 8) / (2 / 8 + 1)), "match": 1.0}
    for wrong in ("", "Depeche Mode", "the", "a"):  # SQuAD's script gives "" and "a" EM 1 here
        row = score_example(wrong, golds)
        assert row["exact_match"] == row["match"] == 0.0 and row["token_recall"] <= 0.5, (wrong, row)
    assert exact_match("Vitamin A", ["A"]) == 0.0 and match("Vitamin A.", ["A"]) == 1.0
    assert match("the symbol ?", ["?"]) == 1.0 and match("why", ["?"]) == 0.0
    # the lighter rule applies to that gold only: "Paris" is still compared as SQuAD does
    assert exact_match("the Paris", ["The The", "Paris"]) == 1.0


def test_retrieval_recall_finds_a_gold_that_normalisation_empties():
    passages = ["Joy Division were a band.", "The The are an English band formed in 1979."]
    assert retrieval_recall(passages, ["The The"]) == 1.0
    assert passages_with_answer(passages, ["The The"]) == [False, True]
    assert score_example("The The", ["The The"], passages)["retrieval_mrr"] == 0.5
    assert retrieval_recall(["the band"], ["The The"]) == 0.0


# SQuAD v2.0's official evaluation script (evaluate-v2.0.py), its three scoring functions verbatim
# but for names: the reference our metrics are checked against.
def _squad_normalize_answer(s):
    import re
    import string

    def remove_articles(text):
        return re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _squad_exact(a_gold, a_pred):
    return int(_squad_normalize_answer(a_gold) == _squad_normalize_answer(a_pred))


def _squad_f1(a_gold, a_pred):
    import collections

    gold_toks = _squad_normalize_answer(a_gold).split()
    pred_toks = _squad_normalize_answer(a_pred).split()
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


SQUAD_PAIRS = [
    ("Wilhelm Conrad Röntgen", "The first prize went to Wilhelm Röntgen in 1901"),
    ("Paris", "paris."), ("Paris", ""), ("the Eiffel Tower", "Eiffel"), ("1901", "in 1901, a year"),
    ("New New York", "york york new"), ("U.S.A.", "usa"), ("Élan — vital", "élan vital"),
]


@pytest.mark.parametrize(("gold", "prediction"), SQUAD_PAIRS)
def test_golds_squad_keeps_score_exactly_as_squads_script(gold, prediction):
    assert exact_match(prediction, [gold]) == _squad_exact(gold, prediction)
    assert token_f1(prediction, [gold]) == pytest.approx(_squad_f1(gold, prediction))


@pytest.mark.parametrize("gold", ["The The", "?", "A", "an", "...", "The"])
def test_an_empty_against_empty_pair_scores_as_in_squads_script(gold):
    """SQuAD's script gives the perfect prediction of such a gold EM 1 and F1 1 (empty against
    empty); so do we, under the lighter normalisation."""
    assert (_squad_exact(gold, gold), _squad_f1(gold, gold)) == (1, 1)
    assert (exact_match(gold, [gold]), token_f1(gold, [gold])) == (1.0, 1.0)


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
