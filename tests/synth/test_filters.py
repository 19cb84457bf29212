"""Each Self-Instruct filter and each Evol-Instruct elimination rule on hand-worked cases."""
import pytest
from rouge_score import rouge_scorer

from configs.generate_data import BLOCKLIST, get_config
from rlhf_jax.data.curate import CurateConfig, near_dedup
from rlhf_jax.synth import filters as F


def test_rouge_l_of_a_known_pair():
    # LCS(the cat sat on the mat, the cat lay on a mat) = "the cat on mat": 4 of 6 tokens each way
    assert F.rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(4 / 6)
    # case and punctuation are not tokens: F = 1
    assert F.rouge_l("Write a poem.", "write A POEM") == 1.0
    # P = 6/9, R = 6/6 -> F = 2PR / (P + R) = 0.8
    assert F.rouge_l("write a poem about the sea", "write a poem about the sea in iambic pentameter") \
        == pytest.approx(0.8)


def test_rouge_pool_equals_the_public_scorer_pair_by_pair():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = ["Give three tips for staying healthy.", "What is the capital of France?", "Write a poem about love."]
    cand = "Give me three tips for staying calm under pressure."
    expected = [scorer.score(p, cand)["rougeL"].fmeasure for p in pool]
    P = F.RougePool(pool)
    assert P.scores(cand).tolist() == pytest.approx(expected)
    assert P.max_score(cand) == (pytest.approx(max(expected)), 0)
    assert F.RougePool().max_score(cand) == (0.0, -1)
    P.remove("What is the capital of France?")
    assert P.texts == [pool[0], pool[2]] and len(P.tokens) == 2


def test_rouge_threshold_boundary_0_7_is_kept_above_is_rejected():
    ten = "a1 a2 a3 a4 a5 a6 a7 a8 a9 a10"
    seven_of_ten = "a1 a2 a3 a4 a5 a6 a7 b8 b9 b10"  # LCS 7 of 10 tokens each: P = R = F = 0.7
    eight_of_ten = "a1 a2 a3 a4 a5 a6 a7 a8 b9 b10"  # F = 0.8
    assert F.rouge_l(ten, seven_of_ten) == pytest.approx(0.7)
    assert not F.too_similar(F.rouge_l(ten, seven_of_ten), 0.7)
    assert F.too_similar(F.rouge_l(ten, eight_of_ten), 0.7)
    f = get_config().filters
    pool, dedup = F.RougePool([ten]), F.DedupIndex(None)
    assert F.instruction_filter(seven_of_ten, f, dedup, pool)[0] is None
    reason, detail = F.instruction_filter(eight_of_ten, f, dedup, pool)
    assert reason == "rouge_similar" and detail["rouge_l"] == pytest.approx(0.8) and detail["similar_to"] == ten


def test_length_bounds_in_words():
    assert not F.length_ok("a b", 3, 5)
    assert F.length_ok("a b c", 3, 5) and F.length_ok("a b c d e", 3, 5)
    assert not F.length_ok("a b c d e f", 3, 5)
    f = get_config().filters.copy_and_resolve_references()
    f.min_words, f.max_words = 3, 5
    pool, dedup = F.RougePool(), F.DedupIndex(None)
    assert F.instruction_filter("Say hi.", f, dedup, pool) == ("too_short", {"words": 2})
    assert F.instruction_filter("Tell me one long story now.", f, dedup, pool) == ("too_long", {"words": 6})


def test_keyword_blocklist_matches_whole_words_and_phrases():
    assert F.blocked_keyword("Draw a picture of a cat.", BLOCKLIST) == "picture"  # first in the list's order
    assert F.blocked_keyword("Please GO TO the store for me.", BLOCKLIST) == "go to"
    assert F.blocked_keyword("Summarize the plot of Hamlet.", BLOCKLIST) == "plot"
    assert F.blocked_keyword("Explain what a mapping of keys to values is.", BLOCKLIST) is None  # not "map"
    assert F.blocked_keyword("Write a haiku about autumn.", BLOCKLIST) is None


def test_bad_start_punctuation_and_non_ascii():
    for text in ("?What is love", " - list three fruits", "Éclair recipe please", "", "   "):
        assert F.bad_start(text), text
    assert not F.bad_start("  Write a poem.") and not F.bad_start("3 reasons to sleep early")


def test_exact_and_near_duplicates_agree_with_the_curation_module():
    idx = F.DedupIndex(0.8)
    base = " ".join(f"w{i}" for i in range(20))
    idx.add("Write a poem.")
    idx.add(base)
    assert idx.check("  write a POEM. ") == "exact_duplicate"
    # the last word changed: 15 of the 16 five-word shingles shared, Jaccard 15/17 = 0.88 >= 0.8
    last = base.replace("w19", "x19")
    assert idx.check(last) == "near_duplicate"
    # a middle word changed: 11 shared of 21, Jaccard 0.52
    middle = base.replace("w10", "x10")
    assert idx.check(middle) is None
    texts = ["Write a poem.", base, last, middle]
    kept, _ = near_dedup([{"text": t} for t in texts], CurateConfig(near_dup_threshold=0.8, language=None))
    fresh, marked = F.DedupIndex(0.8), []
    for t in texts:
        if fresh.check(t) is None:
            fresh.add(t)
            marked.append(t)
    assert marked == [r["text"] for r in kept]
    idx.remove("Write a poem.")
    idx.remove(base)
    assert idx.check("write a poem.") is None and idx.check(last) is None


def test_instruction_filter_order_and_reasons():
    f = get_config().filters
    pool = F.RougePool(["Give three tips for staying healthy and fit."])
    dedup = F.DedupIndex(0.8)
    dedup.add(pool.texts[0])
    assert F.instruction_filter("Draw a picture of a sunset.", f, dedup, pool) == ("blocked_keyword",
                                                                                   {"keyword": "picture"})
    assert F.instruction_filter("give three tips for staying healthy and fit.", f, dedup, pool)[0] == \
        "exact_duplicate"
    # 6 of 8 tokens in order: P = 1, R = 0.75, F = 0.857 > 0.7 (5-word shingles: Jaccard 2/4, not near)
    assert F.instruction_filter("Give three tips for staying healthy.", f, dedup, pool)[0] == "rouge_similar"
    reason, detail = F.instruction_filter("Name the largest ocean on Earth.", f, dedup, pool)
    assert reason is None and detail["rouge_l"] < 0.7


E = get_config().evol_instruct


def test_rule_no_new_information():
    # a reordering adds no content word
    assert F.no_new_information("Write a poem about the sea.", "About the sea, write a poem.", 0.9, 1)
    # two new content words and ROUGE-L 0.8: new information
    assert not F.no_new_information("Write a poem about the sea.",
                                    "Write a poem about the sea in iambic pentameter.", 0.9, 1)
    # one new content word but ROUGE-L 12/13 = 0.92 >= 0.9: the same prompt
    assert F.rouge_l("Write a poem about the sea.", "Write a poem about the sea today.") == pytest.approx(12 / 13)
    assert F.no_new_information("Write a poem about the sea.", "Write a poem about the sea today.", 0.9, 1)
    assert not F.no_new_information("Write a poem about the sea.", "Write a poem about the sea today.", 0.95, 1)


def test_rule_refusal_and_too_short():
    assert F.refusal("I'm sorry, but I cannot help with that.", E.refusals, 80)
    assert F.refusal("As an AI language model, I do not have opinions.", E.refusals, 80)
    long_sorry = "Sorry for the wait. " + "The answer has many parts. " * 20
    assert not F.refusal(long_sorry, E.refusals, 80)  # 104 words: the paper's rule needs < 80
    assert not F.refusal("Paris is the capital of France.", E.refusals, 80)
    assert F.response_too_short("Yes.", 3)
    assert F.response_too_short("the of and it", 3)  # four words, stopwords only
    assert F.response_too_short("... !!! ???", 3)
    assert not F.response_too_short("Paris is the capital.", 3)


def test_rule_copies_template():
    assert F.copies_template("Here is the #Rewritten Prompt#: write two poems.", E.template_words) == \
        "#rewritten prompt#"
    assert F.copies_template("Rewrite the given prompt so that it rhymes.", E.template_words) == "given prompt"
    assert F.copies_template("Write two poems about the sea, each in iambic pentameter.", E.template_words) is None


def test_evol_rule_names_the_first_broken_rule():
    orig = "Write a poem about the sea."
    good = "Write a sonnet about the North Sea in a storm, with a rhyming couplet at the end."
    ok_response = "The grey North Sea rolls under a heavy sky, and the waves break white on the shore."
    assert F.evol_rule(orig, good, ok_response, E) is None
    assert F.evol_rule(orig, "#Rewritten Prompt#: " + good, ok_response, E) == "copies_template"
    assert F.evol_rule(orig, "About the sea, write a poem.", ok_response, E) == "no_new_information"
    assert F.evol_rule(orig, good, "Sorry, I cannot write poems.", E) == "refusal"
    assert F.evol_rule(orig, good, "Waves.", E) == "response_too_short"
    assert F.evol_rule(orig, "Sure! Here is a poem about the sea at night.", ok_response, E) == "rewrite_is_reply"


def test_rewrite_is_reply():
    assert F.rewrite_is_reply("Sure, I'd be happy to help!", E.refusals, E.reply_openers)
    assert F.rewrite_is_reply("I'm ready to help. What's the prompt?", E.refusals, E.reply_openers)
    assert F.rewrite_is_reply("\U0001f92a\U0001f31f I'm ready to help.", E.refusals, E.reply_openers)  # emoji first
    assert F.rewrite_is_reply("Write a poem. I'm sorry, I cannot do more.", E.refusals, E.reply_openers)
    assert not F.rewrite_is_reply("Surely you can name three rivers in Peru?", E.refusals, E.reply_openers)
    assert not F.rewrite_is_reply("Write a sonnet about the sea at night.", E.refusals, E.reply_openers)
