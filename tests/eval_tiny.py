"""Helpers for the evaluation tests: a word-level tokenizer and a tiny random decoder."""
from __future__ import annotations

from rlhf_jax.models import PRESETS, init_model

SPECIALS = ["[PAD]", "[UNK]", "[EOS]"]
WORDS = ("1 2 3 4 5 A B Rate Rating Which is better ? : . , ! the a cat sat on mat dog ran fast slow very "
         "good bad answer question reference Response Request User Assistant Human yes no it").split()


def word_tokenizer(words=WORDS):
    """A whitespace/punctuation word-level tokenizer; every word and digit is one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(SPECIALS + list(dict.fromkeys(words)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def tiny_model(seed: int = 0, **changes):
    """A 2-layer random Llama-shaped decoder with a 128-token vocabulary (PRESETS['test'])."""
    return init_model(PRESETS["test"].replace(**changes), seed=seed)
