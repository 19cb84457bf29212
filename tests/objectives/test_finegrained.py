"""Fine-grained rewards: segmenters on real text, span labels, the per-segment loss, the
per-token placement PPO receives, the component spec, and the stage on the task world."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import TokenizeConfig
from rlhf_jax.objectives import finegrained as F
from rlhf_jax.objectives import ppo as P
from rlhf_jax.train import finegrained as fg_lib

TEXT = ("Bloom is the second album, released in 2018 by EMI. It was good, very good; and then, "
        "after a long while the end came! Done")


@pytest.fixture(scope="module")
def gpt2(shared_data):
    from rlhf_jax.data.corpora import gpt2_tokenizer
    tok = gpt2_tokenizer(shared_data)
    return tok, F.token_classes(tok)


def _segments(tok, ids, ends):
    out, start = [], 0
    for t in np.flatnonzero(ends):
        out.append(tok.decode(ids[start:t + 1]).strip())
        start = t + 1
    return out


@pytest.mark.parametrize("unit, expected", [
    ("sentence", ["Bloom is the second album, released in 2018 by EMI.",
                  "It was good, very good; and then, after a long while the end came!", "Done"]),
    # Wu et al.'s rule: sentences first; inside one, a split after , ; ! ? only when more than 5
    # words follow ("album," has 5 after it: no split); "It was good," (3 words) runs on, then
    # "and then," (2 words) is merged back into the piece before it
    ("subsentence", ["Bloom is the second album, released in 2018 by EMI.", "It was good, very good; and then,",
                     "after a long while the end came!", "Done"]),
    ("response", [TEXT]),
])
def test_segmenters_on_gpt2_tokens(gpt2, unit, expected):
    tok, classes = gpt2
    prompt = tok("Question: what is Bloom?")["input_ids"]
    ids = prompt + tok(TEXT)["input_ids"]
    resp = np.array([[0] * len(prompt) + [1] * (len(ids) - len(prompt))])
    ends = np.asarray(F.segment_ends(jnp.array([ids]), jnp.asarray(resp), classes, unit))[0]
    assert not ends[:len(prompt)].any()  # the prompt's sentence ends are not segments
    assert _segments(tok, ids[len(prompt):], ends[len(prompt):]) == expected


def wu_subsentences(text: str, min_words: int = 5) -> list[str]:
    """Wu et al.'s released sub-sentence rule, written out on whitespace words (the reference):
    sentences end at . ! ?; inside a sentence a piece may start after a word ending in , ; ! ?
    when more than `min_words` words follow; a short piece merges back into the one before it
    (or forward when it opens the sentence)."""
    words, sentences, current = text.split(), [], []
    for w in words:
        current.append(w)
        if w[-1] in ".!?":
            sentences.append(current)
            current = []
    sentences += [current] if current else []
    pieces = []
    for sent in sentences:
        starts, prev = [0], 0
        for t in range(1, len(sent)):
            if sent[t - 1][-1] in ",;!?" and t + min_words < len(sent):
                if t - prev < min_words:
                    if prev > 0:
                        starts[-1] = t  # the short piece joins the one before it
                        prev = t
                else:
                    starts.append(t)
                    prev = t
        bounds = starts + [len(sent)]
        pieces += [" ".join(sent[a:b]) for a, b in zip(bounds, bounds[1:])]
    return pieces


@pytest.mark.parametrize("text", [
    TEXT,
    "a b c d e f, g h, i j k l m n o.",  # "g h," is short and merges back: two pieces
    "Yes, I agree. The cat sat on the mat, and the dog ran in the yard, very fast.",
    "one two three four five six, seven eight nine ten eleven twelve, thirteen fourteen fifteen sixteen seventeen.",
    "Short one. Another, short; sentence! And a final clause, with words, that go on and on until the end",
])
def test_subsentences_follow_wu_et_al(gpt2, text):
    tok, classes = gpt2
    ids = tok(text)["input_ids"]
    ends = np.asarray(F.segment_ends(jnp.array([ids]), jnp.ones((1, len(ids))), classes, "subsentence"))[0]
    assert _segments(tok, ids, ends) == wu_subsentences(text)


def test_word_unit_joins_subword_tokens(gpt2):
    tok, classes = gpt2
    ids = tok(" unbelievably tokenization works")["input_ids"]
    assert len(ids) > 3  # words split into several BPE pieces
    ends = np.asarray(F.segment_ends(jnp.array([ids]), jnp.ones((1, len(ids))), classes, "word"))[0]
    assert _segments(tok, ids, ends) == ["unbelievably", "tokenization", "works"]


def test_segment_labels_follow_the_error_spans(gpt2):
    tok, classes = gpt2
    ids = tok(TEXT)["input_ids"]
    ends = np.asarray(F.segment_ends(jnp.array([ids]), jnp.ones((1, len(ids))), classes, "sentence"))[0]
    start = TEXT.index("It was")
    spans = [{"start": start + 3, "end": start + 7, "category": "Irrelevant"},  # "was " in sentence 2
             {"start": 0, "end": 5, "category": "Unverifiable"}]
    labels = F.segment_labels(ends, ids, tok, spans, ("Irrelevant", "Redundant"))
    assert labels[np.flatnonzero(ends)].tolist() == [1.0, 0.0, 1.0]
    labels = F.segment_labels(ends, ids, tok, spans, ("Unverifiable",))
    assert labels[np.flatnonzero(ends)].tolist() == [0.0, 1.0, 1.0]


def test_world_records_label_words_like_the_gold_reward():
    world = synthetic.WorldConfig(seed=0)
    tok = synthetic.tokenizer()
    records = synthetic.finegrained_records(world, 200)
    comps = F.parse_components("wrong:word:0.3,extra:word:0.3")
    arrays, stats = fg_lib.segment_arrays(records, tok, TokenizeConfig(max_len=24, max_prompt_len=10), comps,
                                          F.token_classes(tok))
    for i, r in enumerate(records):
        c = synthetic.gold_components(r["prompt"], r["response"])
        n_words = len(r["response"].split())
        ends = arrays["ends"][i]
        # one segment per word; the last word's segment closes at the EOS (a special token, no word)
        assert ends[0].sum() == n_words and ends[0][np.flatnonzero(arrays["mask"][i, 0])[-1]] == 1
        bad_extra = int(((1 - arrays["labels"][i, 1]) * ends[1]).sum())
        assert bad_extra == c["extra"]  # extra spans = words past the reference length
        bad_wrong = int(((1 - arrays["labels"][i, 0]) * ends[0]).sum())
        content = [w for w in r["response"].split() if w not in synthetic.FILLERS]
        hits = round(c["correctness"] * max(len(content), len(synthetic.solve(*synthetic.parse_prompt(r["prompt"])))))
        assert bad_wrong == len(content) - hits - max(0, len(content) - len(synthetic.solve(
            *synthetic.parse_prompt(r["prompt"]))))


def test_segment_loss_by_hand():
    logits = jnp.array([[2.0, -1.0, 0.5, 3.0]])
    ends = jnp.array([[1.0, 1.0, 0.0, 1.0]])
    labels = jnp.array([[1.0, 1.0, 0.0, 0.0]])
    loss, m = F.segment_loss(logits, ends, labels)
    expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0)), np.log1p(np.exp(3.0))])
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(m["accuracy"]) == pytest.approx(1 / 3) and float(m["segments"]) == 3


def test_rewards_are_placed_on_segment_ends_and_summed_over_models():
    logits = jnp.array([[[2.0, -1.0, 0.3, -0.2]], [[-5.0, 4.0, 1.0, 1.0]]])  # 2 models, B=1, N=4
    ends = [jnp.array([[0.0, 1.0, 0.0, 1.0]]), jnp.array([[0.0, 0.0, 0.0, 1.0]])]
    placed = sum(F.segment_rewards(logits[k], ends[k], w) for k, w in enumerate((0.3, 0.5)))
    np.testing.assert_allclose(placed, [[0.0, -0.3, 0.0, -0.3 + 0.5]])
    soft = F.segment_rewards(logits[0], ends[0], 0.3, "soft")
    np.testing.assert_allclose(soft, [[0, 0.3 * (2 / (1 + np.exp(1.0)) - 1), 0, 0.3 * (2 / (1 + np.exp(0.2)) - 1)]],
                               rtol=1e-6)
    # PPO: placed rewards go in as they are, the KL penalty on every token
    kl = jnp.array([[0.1, 0.2, 0.0, 0.4]])
    r = P.token_rewards(placed, kl, jnp.ones((1, 4)), 0.5)
    np.testing.assert_allclose(r, [[-0.05, -0.3 - 0.1, 0.0, 0.2 - 0.2]], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec, words", [
    ("rel:clause:0.3", "unit 'clause' is not one of"),
    ("rel:sentence", "expected name:unit:weight"),
    ("rel:sentence:heavy", "weight 'heavy' is not a number"),
    ("a:word:1,a:sentence:1", "repeat"),
])
def test_component_spec_errors(spec, words):
    with pytest.raises(ValueError, match=words):
        F.parse_components(spec)


def test_fine_grained_pipeline_on_the_task_world(tmp_path):
    from configs.ablations.fine_grained import get_config
    from rlhf_jax.stages import run as run_pipeline
    c = get_config("fine_grained,micro")
    c.ppo.iterations = 2
    summary = run_pipeline(c, tmp_path, use_wandb=False)
    fg = summary["fgrm"]
    assert [comp["name"] for comp in fg["components"]] == ["wrong", "extra"]
    assert 0.5 < fg["wrong_val_accuracy"] <= 1 and fg["wrong_val_segments"] > 32
    logged = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "score" in m] == [1, 2]
    assert np.isfinite(summary["ppo"]["gold_reward_final"])
