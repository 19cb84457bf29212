"""judges.py: function judges, the LLM judge against unbatched hand computations, the order rule."""
import numpy as np
import pytest

from rlhf_jax.eval import judges
from tests import tolerance as tol
from tests.eval_tiny import tiny_model, word_tokenizer

RATING = "Rate the answer : {response} . question : {prompt} Rating :"
PAIRWISE = "Which is better ? question : {prompt} A : {response_a} B : {response_b} answer :"
RATING_REF = "Rate the answer : {response} . reference : {reference} . Rating :"


@pytest.fixture(scope="module")
def judge():
    return judges.LLMJudge(tiny_model(seed=3), word_tokenizer(), rating_template=RATING, pairwise_template=PAIRWISE,
                           rating_reference_template=RATING_REF, chat=None, batch_size=2)


def _last_logits(judge, text):
    """Next-token logits after one unpadded prompt (no batching, no padding)."""
    ids = np.array([judge.tokenizer.encode(text, add_special_tokens=False)])
    return np.asarray(judge.model(ids)[0])[0, -1].astype(np.float64)


def _atol(judge, scale: float) -> float:
    """Batched and padded against one unpadded prompt: the forward chain over at most 32 tokens at
    the logits' size (|logit| < 10 for this random model), through a softmax over 5 rating tokens
    (a probability moves by < 1/2 of the logits' error) times `scale` (5 for a 1-5 rating)."""
    return tol.forward(judge.model.cfg, 32, 10.0) / 2 * scale


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_function_judge_scores_and_compares_by_difference():
    gold = lambda prompts, responses: [len(r) for r in responses]
    hard = judges.FunctionJudge(gold)
    np.testing.assert_array_equal(hard.score(["p"] * 2, ["abc", "a"]), [3.0, 1.0])
    np.testing.assert_array_equal(hard.compare(["p"] * 3, ["abc", "ab", "a"], ["a", "cd", "abc"]), [1.0, 0.5, 0.0])
    soft = judges.FunctionJudge(gold, temperature=2.0)
    assert soft.compare(["p"], ["abc"], ["a"])[0] == pytest.approx(1 / (1 + np.exp(-1.0)))  # (3 - 1) / 2


def test_expected_rating_matches_one_prompt_at_a_time(judge):
    prompts = ["the cat sat on the mat ?", "dog ?", "it is very good , yes"]
    responses = ["yes", "the dog ran very fast on the mat", "no"]  # different lengths: left padding matters
    got = judge.score(prompts, responses)
    ids = [judge.tokenizer.convert_tokens_to_ids(t) for t in "12345"]
    for i, (p, r) in enumerate(zip(prompts, responses)):
        probs = _softmax(_last_logits(judge, RATING.format(prompt=p, response=r))[ids])
        assert got[i] == pytest.approx(float(probs @ np.arange(1, 6)), abs=_atol(judge, 5))
    assert np.all((got > 1) & (got < 5))
    # without a pairwise template the judge compares by its expected ratings (batched as `judge`:
    # a row's rating moves in its last bits with the rows padded beside it, and index 1 is a tie)
    pointwise = judges.LLMJudge(judge.model, judge.tokenizer, rating_template=RATING, pairwise_template=None,
                                chat=None, batch_size=judge.batch_size)
    np.testing.assert_array_equal(pointwise.compare(prompts, responses, responses[::-1]),
                                  judges.compare_by_scores(got, pointwise.score(prompts, responses[::-1])))
    # ...and has no position bias to measure (the suites ask `pairwise` before measuring one)
    assert judge.pairwise and not pointwise.pairwise


def test_reference_guided_rating_fills_the_reference(judge):
    got = judge.score(["q"], ["the cat sat"], references=["the dog ran"])
    ids = [judge.tokenizer.convert_tokens_to_ids(t) for t in "12345"]
    text = RATING_REF.format(response="the cat sat", reference="the dog ran")
    expected = _softmax(_last_logits(judge, text)[ids]) @ np.arange(1, 6)
    assert got[0] == pytest.approx(expected, abs=_atol(judge, 5))
    with pytest.raises(ValueError, match="reference"):
        judges.LLMJudge(judge.model, judge.tokenizer, rating_template=RATING_REF, chat=None).score(["q"], ["a"])


def test_pairwise_probability_and_both_orders(judge):
    prompts, a, b = ["the cat ?", "dog ?"], ["yes it sat", "no"], ["no", "the dog ran fast"]
    ids = [judge.tokenizer.convert_tokens_to_ids(t) for t in "AB"]
    first = judge.prefer_first(prompts, a, b)
    swapped = judge.prefer_first(prompts, b, a)
    for i in range(2):
        pa = _softmax(_last_logits(judge, PAIRWISE.format(prompt=prompts[i], response_a=a[i], response_b=b[i]))[ids])
        pb = _softmax(_last_logits(judge, PAIRWISE.format(prompt=prompts[i], response_a=b[i], response_b=a[i]))[ids])
        assert first[i] == pytest.approx(pa[0], abs=_atol(judge, 1))
        assert swapped[i] == pytest.approx(pb[0], abs=_atol(judge, 1))
    # the judge's verdict: a win only when both orders agree
    a_second = 1 - swapped
    expected = np.where((first > 0.5) & (a_second > 0.5), 1.0, np.where((first < 0.5) & (a_second < 0.5), 0.0, 0.5))
    np.testing.assert_array_equal(judge.compare(prompts, a, b), expected)


def test_disagreeing_orders_are_a_tie():
    always_first = lambda prompts, first, second, refs=None: np.ones(len(prompts))
    p1, p2 = judges.both_orders(always_first, ["p"] * 3, ["x", "y", "z"], ["u", "v", "w"])
    np.testing.assert_array_equal(p1, [1, 1, 1])  # a shown first: a wins
    np.testing.assert_array_equal(p2, [0, 0, 0])  # a shown second: b wins
    np.testing.assert_array_equal(judges.combine_orders(p1, p2), [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(judges.combine_orders(p1, p2, rule="average"), [0.5, 0.5, 0.5])
    longer = lambda prompts, first, second, refs=None: np.array([float(len(f) > len(s)) for f, s in zip(first, second)])
    np.testing.assert_array_equal(judges.combine_orders(*judges.both_orders(longer, ["p"] * 2, ["long", "s"],
                                                                           ["s", "long"])), [1.0, 0.0])
    assert judges.combine_orders([0.9], [0.3], rule="average")[0] == pytest.approx(0.6)


def test_chat_wrapping_uses_the_named_template(judge):
    chat_judge = judges.LLMJudge(judge.model, judge.tokenizer, chat="plain")
    tok = judge.tokenizer
    pieces = ("User: ", "yes", "\n", "Assistant: ")
    expected = [i for piece in pieces for i in tok.encode(piece, add_special_tokens=False)]
    assert chat_judge.encode("yes") == expected


def test_chat_wrapping_uses_the_tokenizers_own_template(judge):
    tok = word_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}Assistant :{% endif %}")
    chat_judge = judges.LLMJudge(judge.model, tok, chat="tokenizer")
    expected = tok.encode("user : the cat sat Assistant :", add_special_tokens=False)
    assert chat_judge.encode("the cat sat") == expected
    assert len(expected) == 7  # user(unknown) : the cat sat Assistant :


def test_judge_tokens_must_be_single_tokens(judge):
    with pytest.raises(ValueError, match="one token"):
        judges.single_token_id(judge.tokenizer, "cat sat")
