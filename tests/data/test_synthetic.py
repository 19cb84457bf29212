"""The built-in task world: deterministic sets, the gold reward's components, the annotators."""
import numpy as np
import pytest

from rlhf_jax.data import synthetic as S
from rlhf_jax.data.records import validate_pair, validate_ranking, validate_sft
from rlhf_jax.data.tokenize import TokenizeConfig, ranking_arrays, sft_arrays


def test_sets_are_identical_across_runs_and_differ_by_seed():
    a, b = S.WorldConfig(seed=1), S.WorldConfig(seed=2)
    assert S.sft_records(a, 20) == S.sft_records(a, 20)
    assert S.ranking_records(a, 20, k=4) == S.ranking_records(a, 20, k=4)
    assert S.prompts(a, 20) == S.prompts(a, 20)
    assert S.sft_records(a, 20) != S.sft_records(b, 20)
    assert S.prompts(a, 20, "train") != S.prompts(a, 20, "eval")


def test_records_validate_and_answers_are_correct():
    cfg = S.WorldConfig(seed=0)
    for r in S.sft_records(cfg, 50):
        validate_sft(r)
        assert S.gold_reward(r["prompt"], r["completion"]) == 1.0
    for r in S.ranking_records(cfg, 50, k=5):
        validate_ranking(r)
        assert len(r["responses"]) == 5
    for r in S.pair_records(cfg, 20):
        validate_pair(r)


def test_gold_reward_hand_computed():
    p = "sort 3 1 2 =>"
    assert S.gold_components(p, "1 2 3") == {"correctness": 1.0, "extra": 0.0, "length": 3.0}
    assert S.gold_reward(p, "1 2") == pytest.approx(2 / 3)  # truncated: 2 of 3 positions
    assert S.gold_reward(p, "sure 1 2 3") == pytest.approx(1.0 - 0.1)  # filler ignored for correctness
    assert S.gold_reward(p, "1 2 3 3 3", length_coef=0.2) == pytest.approx(3 / 5 - 0.4)
    assert S.gold_reward("reverse 4 5 =>", "5 4") == 1.0
    assert S.gold_reward("max 4 9 2 =>", "4") == 0.0
    with pytest.raises(ValueError, match="not a task-world prompt"):
        S.gold_reward("hello", "x")


def test_argmax_annotator_follows_gold_and_flips_follow_the_rate():
    rng = np.random.default_rng(0)
    p, responses = "sort 3 1 2 =>", ["1 2", "1 2 3", "sure 1 2 3", "3 1 2"]
    exact = S.WorldConfig(annotator_model="argmax")
    assert S.annotate(p, responses, exact, rng) == [2, 0, 1, 3]
    flip = S.WorldConfig(annotator_model="flip", flip_rate=0.25)
    pairs = [S.annotate(p, ["1 2 3", "1 2"], flip, rng) for _ in range(4000)]
    flipped = np.mean([r == [1, 0] for r in pairs])
    assert abs(flipped - 0.25) < 0.025


def test_bradley_terry_annotator_matches_the_sigmoid():
    rng = np.random.default_rng(1)
    p = "sort 3 1 2 =>"
    cfg = S.WorldConfig(annotator_model="bt", bt_temperature=0.2)
    g_a, g_b = S.gold_reward(p, "1 2 3"), S.gold_reward(p, "1 2")  # 1 vs 2/3
    wins = np.mean([S.annotate(p, ["1 2 3", "1 2"], cfg, rng) == [0, 1] for _ in range(4000)])
    expected = 1 / (1 + np.exp(-(g_a - g_b) / 0.2))
    assert abs(wins - expected) < 0.025


def test_annotators_disagree_and_consensus_is_a_ranking():
    p = "sort 3 1 2 =>"
    responses = ["1 2 3 3", "1 2 3"]  # differ only in length: the length weight decides
    cfg = S.WorldConfig(n_annotators=5, disagreement=1.0, length_coef=0.1)
    views = {a: 0.1 * (1 + S._annotator_bias(cfg, a)) for a in range(5)}
    assert len({round(v, 6) for v in views.values()}) == 5
    consensus = S.WorldConfig(n_annotators=5, disagreement=1.0, consensus=True, annotator_model="argmax")
    ranks = S.annotate(p, responses, consensus, np.random.default_rng(0))
    assert sorted(set(ranks)) == list(range(len(set(ranks))))


def test_world_tokenizer_and_arrays():
    tok = S.tokenizer()
    cfg = S.WorldConfig(seed=0)
    sft, stats = sft_arrays(S.sft_records(cfg, 8), tok, TokenizeConfig(max_len=16, max_prompt_len=10))
    assert sft["tokens"].shape == (8, 16) and stats["examples"] == 8 and stats["response_truncated"] == 0
    assert tok.decode(sft["tokens"][0][sft["segment_ids"][0] == 1]).endswith("<eos>")
    ranked, _ = ranking_arrays(S.ranking_records(cfg, 6, k=4), tok, TokenizeConfig(max_len=16, max_prompt_len=10))
    assert ranked["tokens"].shape == (6, 4, 16) and (ranked["valid"] == 1).all()
    assert sorted(ranked["ranks"][0].tolist())[0] == 0


def test_pretraining_text_is_its_own_distribution():
    """The world's pretraining text (PPO-ptx's data with data.ptx = "world:pretrain"): seeded,
    disjoint splits, half solved examples of 1..9 items as running text (the demonstrations hold
    3..4 items, answer only), half runs of consecutive digits; every token in the vocabulary and
    in the loss, within the default max_len."""
    cfg = S.WorldConfig(seed=0, min_items=3, max_items=4)
    train, val = S.pretrain_records(cfg, 400, "train"), S.pretrain_records(cfg, 400, "val")
    assert train == S.pretrain_records(cfg, 400, "train") and train != val
    assert train[:50] != S.pretrain_records(S.WorldConfig(seed=1), 50, "train")
    solved, runs, lengths = 0, 0, set()
    for r in train:
        assert r["prompt"] == "" and r["completion"]
        words = r["completion"].split()
        if S.SEP in words:
            i = words.index(S.SEP)
            prompt, answer = " ".join(words[:i + 1]), " ".join(words[i + 1:])
            assert S.gold_reward(prompt, answer) == 1.0
            lengths.add(i - 1)
            solved += 1
        else:
            digits = [int(w) for w in words]
            steps = {b - a for a, b in zip(digits, digits[1:])}
            assert steps in ({1}, {-1}) and 3 <= len(digits) <= 9
            runs += 1
    assert 150 < solved < 250 and solved + runs == 400
    assert lengths == set(range(1, 10))  # wider than the demonstrations' 3..4 items
    arrays, stats = sft_arrays(train, S.tokenizer(), TokenizeConfig(max_len=24, max_prompt_len=10))
    assert stats["response_truncated"] == 0
    assert not (arrays["tokens"] == S.vocabulary().index("<unk>")).any()
    np.testing.assert_array_equal(arrays["loss_mask"], arrays["segment_ids"])  # every token is in the loss


def test_run_data_reads_the_pretraining_text_for_ptx_and_its_held_out_split():
    from configs import instructgpt
    from rlhf_jax.data.run_data import RunData, world_config
    c = instructgpt.get_config("micro")
    c.data.update(ptx="world:pretrain", n_ptx=32, n_sft_pretrain=48)
    world = world_config(c)
    data = RunData(c, S.tokenizer(), world)
    assert data.records("ptx") == S.pretrain_records(world, 32, "train")
    assert data.records("ptx_val") == S.pretrain_records(world, c.data.n_sft_val, "val")
    assert data.records("sft_train") == S.sft_records(world, c.data.n_sft, "train") + S.pretrain_records(world, 48)
    assert data.records("sft_val") == S.sft_records(world, c.data.n_sft_val, "val")  # demonstrations only
    c.data.ptx = ""  # the default: PPO-ptx on demonstrations of their own split, no pretraining text
    data = RunData(c, S.tokenizer(), world)
    assert data.records("ptx") == S.sft_records(world, 32, "ptx")
    with pytest.raises(Exception, match="ptx_val"):
        data.records("ptx_val")
