"""Talk to a checkpoint: an interactive terminal chat, or answers to given prompts as JSON lines.

    python -m rlhf_jax.chat --model ~/.cache/rlhf_jax/models/SmolLM2-135M-Instruct.Q4_1.gguf
    python -m rlhf_jax.chat --model runs/smollm2:ppo --system "Answer briefly." --temperature 0.7 --top-p 0.9
    python -m rlhf_jax.chat --model runs/smollm2:ppo --prompt "Name a prime." --prompt "And another?"
    python -m rlhf_jax.chat --model m.gguf --prompts prompts.jsonl     # {"prompt": ...} per line, or text lines

`--model` is anything `rlhf_jax.synth.generator.load_model` reads: a HF directory, a GGUF file, or
WORKDIR:STAGE. Each turn renders the whole conversation (system prompt, earlier turns, the new
message) with the tokenizer's chat template (the named 'plain' template when it has none) and samples
the answer with the project's KV-cache sampler (`rlhf_jax.generate.generate`). Tokens stream as they
are sampled: the jitted sampler hands each step's token to the host through `jax.debug.callback`
(its `on_step` hook), and the text decoded so far is printed as it grows. Prompts are left-padded to
a multiple of 64 tokens so that a conversation compiles once per 64 tokens of history, not per turn.
In the terminal, `/reset` forgets the conversation and `/exit` (or end of input) leaves.

With --prompt / --prompts the prompts are turns of ONE conversation (each sees the earlier answers;
add --independent for separate one-turn conversations), and each answer is printed as a JSON line
{prompt, response, tokens, seconds}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from rlhf_jax.data.tokenize import TokenizeConfig, encode_prompt, pad_left
from rlhf_jax.errors import UserError
from rlhf_jax.generate import SamplingConfig, generate

BUCKET = 64


class _Stream:
    """The host end of the sampler's `on_step`: collects row 0's tokens in step order and calls
    `emit(text)` with each newly decodable piece of text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.emit: Callable[[str], None] | None = None
        self.reset()

    def reset(self):
        self.pending: dict[int, tuple[int, bool]] = {}
        self.ids: list[int] = []
        self.next = 0
        self.shown = ""

    def __call__(self, i, token_B, live_B):
        self.pending[int(i)] = (int(token_B[0]), bool(live_B[0]))
        while self.next in self.pending:
            token, live = self.pending.pop(self.next)
            self.next += 1
            if live:
                self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.emit is not None and not text.endswith("\ufffd") and text.startswith(self.shown):
            self.emit(text[len(self.shown):])  # a partly decoded UTF-8 character waits for its bytes
            self.shown = text


class Chat:
    """A conversation with a model: `reply(text)` answers one user turn, with the earlier turns as context."""

    def __init__(self, model, tokenizer, sampling: SamplingConfig, system: str | None = None, seed: int = 0):
        self.model, self.tokenizer, self.system = model, tokenizer, system
        self.cfg = sampling
        self.tcfg = TokenizeConfig(template=None if getattr(tokenizer, "chat_template", None) else "plain")
        self.pad = sampling.pad_token_id
        self.key = jax.random.key(seed)
        self.turn = 0
        self.history: list[dict] = []
        self.stream = _Stream(tokenizer)

    @classmethod
    def load(cls, spec: str, *, temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=256, system=None, seed=0):
        from rlhf_jax.synth.generator import load_model
        model, tokenizer = load_model(spec)
        eos = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                  eos_token_ids=eos, pad_token_id=pad)
        return cls(model, tokenizer, sampling, system=system, seed=seed)

    def reset(self) -> None:
        self.history = []

    def messages(self, user_text: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": user_text}]

    def prompt_ids(self, user_text: str) -> list[int]:
        """The rendered conversation up to the start of the answer to `user_text`."""
        return encode_prompt(self.tokenizer, self.messages(user_text), self.tcfg)

    def reply(self, user_text: str, emit: Callable[[str], None] | None = None) -> dict:
        """Answer `user_text` (streamed piece by piece to `emit` when given) and add both turns to the history.
        Returns {prompt, response, tokens, seconds}."""
        t0 = time.perf_counter()
        ids = self.prompt_ids(user_text)
        limit = self.model.cfg.max_seq_len - self.cfg.max_new_tokens
        if len(ids) > limit:
            raise UserError(f"the conversation is {len(ids)} tokens, past the model's {self.model.cfg.max_seq_len} "
                            f"less --max-new-tokens {self.cfg.max_new_tokens}: /reset it")
        length = min(-(-len(ids) // BUCKET) * BUCKET, limit)
        tokens, mask = pad_left([ids], pad_id=self.pad, length=length)
        self.stream.reset()
        self.stream.emit = emit
        key = jax.random.fold_in(self.key, self.turn)
        self.turn += 1
        gen = generate(self.model.graphdef, self.model.params, tokens, mask, key, self.cfg,
                       on_step=self.stream if emit is not None else None)
        out = np.asarray(gen.tokens_BxN[0])[: int(np.asarray(gen.mask_BxN[0]).sum())].tolist()
        response = self.tokenizer.decode(out, skip_special_tokens=True)
        if emit is not None and response.startswith(self.stream.shown) and response != self.stream.shown:
            emit(response[len(self.stream.shown):])
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": response}]
        return {"prompt": user_text, "response": response, "tokens": len(out),
                "seconds": round(time.perf_counter() - t0, 3)}


def read_prompts(path: str) -> list[str]:
    """Prompts from a file: JSON lines with a "prompt" field (or JSON strings), else one prompt per text line."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    prompts = []
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith(("{", '"')):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if isinstance(value, dict):
                if not isinstance(value.get("prompt"), str):
                    raise UserError(f"{path}:{n}: a JSON object needs a string field 'prompt'")
                value = value["prompt"]
            prompts.append(str(value))
        else:
            prompts.append(line)
    return prompts


def interactive(chat: Chat, stdin=sys.stdin, stdout=sys.stdout) -> None:
    """The terminal loop: a line in, the streamed answer out; /reset, /exit."""
    def emit(text):
        stdout.write(text)
        stdout.flush()

    stdout.write("Type a message; /reset forgets the conversation, /exit leaves.\n")
    while True:
        stdout.write("> ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return
        if text == "/reset":
            chat.reset()
            stdout.write("(conversation reset)\n")
            continue
        try:
            chat.reply(text, emit=emit)
        except UserError as e:
            stdout.write(f"\nerror: {e}")
        stdout.write("\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlhf_jax.chat", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", required=True, help="a HF directory, a GGUF file or WORKDIR:STAGE")
    ap.add_argument("--system", default=None, help="a system prompt")
    ap.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", action="append", help="answer this and print a JSON line (repeatable)")
    ap.add_argument("--prompts", help="a file of prompts: JSON lines ({'prompt': ...}) or text lines")
    ap.add_argument("--independent", action="store_true", help="with --prompt(s): each prompt its own conversation")
    args = ap.parse_args(argv)
    try:
        prompts = list(args.prompt or []) + (read_prompts(args.prompts) if args.prompts else [])
        try:
            sampling = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            max_new_tokens=args.max_new_tokens)
            SamplingConfig(**sampling)
        except ValueError as e:
            raise UserError(str(e)) from None
        chat = Chat.load(args.model, system=args.system, seed=args.seed, **sampling)
        if not prompts:
            try:
                interactive(chat)
            except KeyboardInterrupt:  # Ctrl-C leaves like /exit
                print()
            return 0
        for prompt in prompts:
            if args.independent:
                chat.reset()
            print(json.dumps(chat.reply(prompt)), flush=True)
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import os

    from rlhf_jax.hostenv import xla_cpu_defaults
    xla_cpu_defaults(os.environ)  # XLA's flags as the other CLIs set them; read when jax first compiles
    raise SystemExit(main())
