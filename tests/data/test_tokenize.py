"""Prompt masks, truncation policy, padding, packing (equal to unpacked loss) and the cache."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import (TokenizeConfig, TruncationStats, Unfinished, cached, decode_sampled, encode_chat,
                                    encode_example, encode_sft, pack, pad_left, pad_right, sft_arrays)
from rlhf_jax.models import PRESETS, init_model
from rlhf_jax.objectives.lm import token_logprobs
from tests import tolerance as tol

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def world_tok():
    return synthetic.tokenizer()


def test_prompt_is_masked_and_eos_is_learned(world_tok):
    ids, mask = encode_example(world_tok, "sort 3 1 2 =>", "1 2 3", TokenizeConfig())
    assert world_tok.convert_ids_to_tokens(ids) == ["sort", "3", "1", "2", "=>", "1", "2", "3", "<eos>"]
    assert mask == [0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_an_unfinished_response_is_encoded_without_the_eos(world_tok):
    """A sampled response cut at the length limit (`Unfinished`, from `decode_sampled`) keeps no EOS
    in training rows or judged rows: the EOS is learned and read only where the policy produced it."""
    tok = world_tok
    ids = [tok.convert_tokens_to_ids(t) for t in ["1", "2", "3", "<eos>"]]
    response = np.array([ids, ids[:3] + [0]])  # row 0 ended, row 1 cut after 3 tokens (then padding)
    texts, ended = decode_sampled(tok, response, np.array([[1, 1, 1, 1], [1, 1, 1, 0]]))
    assert ended.tolist() == [True, False] and texts == ["1 2 3", "1 2 3"]
    assert not isinstance(texts[0], Unfinished) and isinstance(texts[1], Unfinished)
    rows, _ = sft_arrays([{"prompt": "sort 3 1 2 =>", "completion": t} for t in texts], tok, TokenizeConfig(max_len=12))
    eos = tok.convert_tokens_to_ids("<eos>")
    assert [int((r == eos).sum()) for r in rows["tokens"]] == [1, 0] and rows["loss_mask"].sum(1).tolist() == [4, 3]


def test_a_ranking_keeps_the_unfinished_mark_through_its_file(world_tok, tmp_path):
    """Stage prefs ranks decoded samples and writes them as JSONL text: its "ended" field gives the
    reader back `Unfinished`, and the reward model's rows (`ranking_arrays`) have no EOS after it."""
    import json

    from rlhf_jax.data.sources import read_records
    from rlhf_jax.data.tokenize import ranking_arrays
    from rlhf_jax.stages import prefs
    tok = world_tok
    records, _ = prefs.rank(["sort 3 1 2 =>"], [["1 2 3", Unfinished("1 2")]], np.array([[0.9, 0.1]]))
    assert records[0]["ended"] == [True, False]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    back, _ = read_records(path, "ranking")
    assert [isinstance(r, Unfinished) for r in back[0]["responses"]] == [False, True]
    rows, _ = ranking_arrays(back, tok, TokenizeConfig(max_len=12))
    eos = tok.convert_tokens_to_ids("<eos>")
    assert (rows["tokens"][0] == eos).sum(1).tolist() == [1, 0]
    assert rows["mask"][0].sum(1).tolist() == [5 + 3 + 1, 5 + 2]  # prompt 5, response, EOS only after the ended one
    plain, _ = ranking_arrays([{**back[0], "responses": [str(r) for r in back[0]["responses"]]}], tok,
                              TokenizeConfig(max_len=12))
    assert (plain["tokens"][0] == eos).sum(1).tolist() == [1, 1]  # without the mark both would end in EOS


def test_truncation_keeps_prompt_end_and_cuts_response(world_tok):
    stats = TruncationStats()
    cfg = TokenizeConfig(max_len=6, max_prompt_len=3)
    ids, mask = encode_example(world_tok, "sort 9 8 7 6 =>", "6 7 8 9", cfg, stats)
    assert world_tok.convert_ids_to_tokens(ids) == ["7", "6", "=>", "6", "7", "8"]
    assert mask == [0, 0, 0, 1, 1, 1]
    encode_example(world_tok, "max 1 =>", "1", cfg, stats)  # 3 + 2 tokens fit: counted, not cut
    assert stats.as_dict() == {"examples": 2, "prompt_truncated": 1, "response_truncated": 1}


def test_padding_sides():
    tokens, mask = pad_right([[1, 2, 3], [4]], pad_id=9)
    np.testing.assert_array_equal(tokens, [[1, 2, 3], [4, 9, 9]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0]])
    tokens, mask = pad_left([[1, 2, 3], [4]], pad_id=9, length=4)
    np.testing.assert_array_equal(tokens, [[9, 1, 2, 3], [9, 9, 9, 4]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])


def test_chat_loss_on_assistant_turns_only(shared_data):
    from rlhf_jax.data.corpora import gpt2_tokenizer
    tok = gpt2_tokenizer(shared_data)
    tok.chat_template = CHATML
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "See you."}]
    for template in (None, "chatml"):
        ids, mask = encode_chat(tok, messages, TokenizeConfig(template=template, add_eos=False))
        learned = tok.decode([i for i, m in zip(ids, mask) if m])
        assert learned == "Hello!<|im_end|>\nSee you.<|im_end|>\n", template
        assert tok.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there")
    hh_ids, hh_mask = encode_sft(tok, {"messages": messages[1:3]}, TokenizeConfig(template="hh"))
    assert tok.decode(hh_ids) == "\n\nHuman: Hi there\n\nAssistant: Hello!<|endoftext|>"
    assert tok.decode([i for i, m in zip(hh_ids, hh_mask) if m]) == "Hello!<|endoftext|>"


def test_packed_loss_equals_unpacked(world_tok):
    cfg = synthetic.WorldConfig(seed=3)
    examples = [encode_sft(world_tok, r, TokenizeConfig()) for r in synthetic.sft_records(cfg, 7)]
    model = init_model(PRESETS["test"].replace(vocab_size=len(world_tok)), seed=0)

    def summed_logprob(tokens, loss_mask, **kw):
        logits, _ = model(jnp.asarray(tokens), **kw)
        logp = token_logprobs(logits[:, :-1], jnp.asarray(tokens)[:, 1:])
        return float((logp * loss_mask[:, 1:]).sum()), int(loss_mask[:, 1:].sum())

    tokens, pad_mask = pad_right([e[0] for e in examples])
    loss_mask = pad_right([e[1] for e in examples])[0] * pad_mask
    unpacked = summed_logprob(tokens, loss_mask, segment_ids_BxT=pad_mask)
    packed = pack(examples, row_len=32)
    assert packed["tokens"].shape[0] < len(examples)  # several examples share a row
    assert set(np.unique(packed["segment_ids"])) >= {0, 1, 2}
    result = summed_logprob(packed["tokens"], packed["loss_mask"], segment_ids_BxT=packed["segment_ids"],
                            positions_BxT=packed["positions"])
    assert result[1] == unpacked[1]
    # packed rows attend in another layout: the forward chain over 32 tokens, the log-softmax over
    # the vocabulary and the sum over the loss tokens (log-probs share a sign: relative to the sum)
    c = model.cfg
    chain = tol.decoder_chain(c.d_model, c.d_ff, c.n_layers, c.head_dim, 32) + c.vocab_size + unpacked[1]
    np.testing.assert_allclose(result[0], unpacked[0], rtol=tol.f32(chain))
    # without segment ids attention would cross examples and the loss would change
    crossed = summed_logprob(packed["tokens"], packed["loss_mask"], positions_BxT=packed["positions"])
    assert abs(crossed[0] - unpacked[0]) > 1e-3


def test_cache_skips_the_second_build(tmp_path, monkeypatch):
    calls = []

    def build():
        calls.append(1)
        return {"tokens": np.arange(6).reshape(2, 3)}

    key = {"source": "abc", "tokenizer": "t", "max_len": 3}
    first, hit1 = cached(key, build, tmp_path)
    second, hit2 = cached(key, build, tmp_path)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(first["tokens"], second["tokens"])
    _, hit3 = cached({**key, "max_len": 4}, build, tmp_path)
    assert not hit3 and len(calls) == 2
    # another version of the data layer's code does not read what this one stored
    import rlhf_jax.data.tokenize as tokenize_module
    monkeypatch.setattr(tokenize_module, "code_fingerprint", lambda: "another-version")
    _, hit4 = cached(key, build, tmp_path)
    assert not hit4 and len(calls) == 3
    assert jax  # jax imported for the model above


def test_sft_arrays_are_cached_on_disk(world_tok, tmp_path, monkeypatch):
    from rlhf_jax.data.tokenize import sft_arrays
    monkeypatch.setenv("RLHF_JAX_CACHE", str(tmp_path))
    records = synthetic.sft_records(synthetic.WorldConfig(seed=5), 12)
    cfg = TokenizeConfig(max_len=20, max_prompt_len=12)
    first, stats1 = sft_arrays(records, world_tok, cfg, cache_key={"world_seed": 5, "n": 12})
    second, stats2 = sft_arrays(records, world_tok, cfg, cache_key={"world_seed": 5, "n": 12})
    assert (stats1["from_cache"], stats2["from_cache"]) == (False, True)
    assert stats2["examples"] == 12
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])


def test_batch_iterator_resumes_exactly():
    from rlhf_jax.data.batches import BatchIterator
    arrays = {"x": np.arange(10)}
    straight = BatchIterator(arrays, batch_size=3, seed=1)
    seen = [next(straight)["x"].tolist() for _ in range(7)]  # crosses two epoch boundaries
    resumed = BatchIterator(arrays, batch_size=3, seed=1)
    for _ in range(4):
        next(resumed)
    again = BatchIterator(arrays, batch_size=3, seed=1)
    again.set_position(resumed.position())
    assert [next(again)["x"].tolist() for _ in range(3)] == seen[4:]
    assert sorted(sum(seen[:3], [])) == sorted(set(sum(seen[:3], [])))  # no repeats inside an epoch
