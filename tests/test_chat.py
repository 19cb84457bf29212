"""The chat command on a tiny random Llama with the GPT-2 tokenizer and a ChatML template."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlhf_jax.chat import BUCKET, Chat, main, read_prompts
from rlhf_jax.data.tokenize import pad_left
from rlhf_jax.generate import SamplingConfig, generate
from rlhf_jax.models import ModelConfig, init_model, save_pretrained
from tests.conftest import ROOT, skip_without_data

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer, its HF directory): random weights scaled up so that greedy choices are not near-ties."""
    skip_without_data()
    from rlhf_jax.data.tokenize import gpt2_tokenizer
    tok = gpt2_tokenizer()
    tok.chat_template = CHATML
    cfg = ModelConfig(family="llama", vocab_size=len(tok), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=8, d_ff=64, max_seq_len=256, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    model = init_model(cfg, seed=0)
    model.params = jax.tree.map(lambda x: 5 * x if x.ndim > 1 else x, model.params)
    directory = save_pretrained(model, tmp_path_factory.mktemp("tiny") / "hf", tok)
    return model, tok, directory


def _greedy(tok, n=12):
    return SamplingConfig(max_new_tokens=n, temperature=0.0, eos_token_ids=(tok.eos_token_id,),
                          pad_token_id=tok.pad_token_id)


def _template_ids(tok, messages):
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_greedy_answer_is_the_samplers_and_streams_in_pieces(tiny):
    model, tok, _ = tiny
    chat = Chat(model, tok, _greedy(tok), system="Be brief.")
    pieces = []
    out = chat.reply("Hello there", emit=pieces.append)
    ids = _template_ids(tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}])
    assert chat.history[0] == {"role": "user", "content": "Hello there"}
    tokens, mask = pad_left([ids], pad_id=tok.pad_token_id, length=-(-len(ids) // BUCKET) * BUCKET)
    gen = generate(model.graphdef, model.params, tokens, mask, jax.random.key(0), _greedy(tok))
    expected = np.asarray(gen.tokens_BxN[0])[: int(gen.mask_BxN[0].sum())].tolist()
    assert out["tokens"] == len(expected) == 12
    assert out["response"] == tok.decode(expected, skip_special_tokens=True)
    assert len(pieces) > 1 and "".join(pieces) == out["response"]  # streamed, token by token
    # the prompt's left padding (to a multiple of 64) changes nothing: the unpadded prompt answers the same
    plain = generate(model.graphdef, model.params, np.array([ids]), np.ones((1, len(ids)), np.int32),
                     jax.random.key(0), _greedy(tok))
    assert np.asarray(plain.tokens_BxN[0]).tolist() == expected


def test_history_goes_through_the_template_and_reset_clears_it(tiny):
    model, tok, _ = tiny
    chat = Chat(model, tok, _greedy(tok, 6))
    first = chat.reply("What is two plus two?")["response"]
    second_ids = chat.prompt_ids("And three?")
    assert second_ids == _template_ids(tok, [{"role": "user", "content": "What is two plus two?"},
                                             {"role": "assistant", "content": first},
                                             {"role": "user", "content": "And three?"}])
    assert first and first in tok.decode(second_ids)
    chat.reply("And three?")
    assert len(chat.history) == 4
    chat.reset()
    assert chat.history == []
    assert chat.prompt_ids("And three?") == _template_ids(tok, [{"role": "user", "content": "And three?"}])


def test_prompts_print_json_lines_of_one_conversation(tiny, tmp_path, capsys):
    model, tok, directory = tiny
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Second question"}\n"Third"\n')
    assert read_prompts(str(prompts)) == ["Second question", "Third"]
    argv = ["--model", str(directory), "--temperature", "0", "--max-new-tokens", "5", "--prompt", "First",
            "--prompts", str(prompts)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["First", "Second question", "Third"]
    assert all(set(r) == {"prompt", "response", "tokens", "seconds"} and 1 <= r["tokens"] <= 5 for r in rows)
    # the same turns replayed in process: the CLI kept the history between prompts
    chat = Chat(model, tok, _greedy(tok, 5))
    assert [chat.reply(p)["response"] for p in ("First", "Second question", "Third")] == [r["response"] for r in rows]
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    assert main(["--model", str(directory), "--prompts", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1: a JSON object needs a string field 'prompt'" in capsys.readouterr().err


def test_interactive_loop_through_stdin(tiny):
    model, tok, directory = tiny
    run = subprocess.run([sys.executable, "-m", "rlhf_jax.chat", "--model", str(directory), "--temperature", "0",
                          "--max-new-tokens", "6"], input="Hello\nHello\n/reset\nHello\n/exit\nnever read\n",
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    chat = Chat(model, tok, _greedy(tok, 6))
    a1, a2 = chat.reply("Hello")["response"], chat.reply("Hello")["response"]
    chat.reset()
    a3 = chat.reply("Hello")["response"]
    assert a1 == a3
    expected = f"> {a1}\n> {a2}\n> (conversation reset)\n> {a3}\n> "
    assert run.stdout.endswith(expected), run.stdout


def test_a_bad_model_or_flag_names_what_is_wrong(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "absent.gguf"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert f"--model {tmp_path / 'absent.gguf'}: no such HF directory, GGUF file or WORKDIR:STAGE" in err
    assert main(["--model", str(tmp_path / "absent.gguf"), "--temperature", "-1", "--prompt", "hi"]) == 2
    assert "temperature=-1.0 must be >= 0" in capsys.readouterr().err
