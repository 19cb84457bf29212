"""What the command-line tools share: a flag parser whose help is the tool's docstring, and the
JSON result printed on stdout and, with --out, written to a file.

Each tool puts the repository root on sys.path before `from tools._common import ...`, so this
works when the tool is run as a script and when a test loads it by path.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from rlhf_jax.hostenv import cpu_info, host, usable_cores  # noqa: F401  (the tools' JSON names the machine)


def parser(doc: str | None, out: bool = False) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help shows `doc` (the tool's module docstring) as written; with
    `out`, the flag --out PATH (default "": print only)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if out:
        ap.add_argument("--out", default="", help="also write the JSON here")
    return ap


@contextlib.contextmanager
def torch_on_every_core():
    """torch with a thread for each core this process may run on (its affinity, not the machine's
    count, which would oversubscribe a narrower affinity); the caller's count restored after.
    Yields that thread count."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(usable_cores())
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)  # as it was (tests call the tools' main in their own process)


def report(result, out: str | Path = "", indent: int = 2, **dumps) -> str:
    """Print `result` as JSON (json.dumps with `indent` and `dumps`) and, when `out` is set, write
    the same text, newline-terminated, to that file (its folder made if missing). Returns the text."""
    text = json.dumps(result, indent=indent, **dumps)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")
    return text


def load_config(spec: str, sets: list[str] = ()):
    """The config `path[:variants]`, with each `--set key.path=value` applied (a Python literal,
    else the string)."""
    import ast
    import importlib.util
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    c = module.get_config(variant or None)
    for item in sets:
        key, _, text = item.partition("=")
        *parents, leaf = key.split(".")
        target = c
        for name in parents:
            target = target[name]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        target[leaf] = value
    return c


# TRL's trainer configs (BaseConfig, 0.2x) turn on two things by default, on every device, CPU
# included: bfloat16 autocast (bf16 = not fp16) and activation checkpointing (gradient_checkpointing
# = True, one more forward pass per step). Our steps run float32 without rematerialisation
# (model.remat "none"), so the like-for-like comparison pins both off.
TRL_SETTINGS = {"matched": {"bf16": False, "fp16": False, "gradient_checkpointing": False}, "default": {}}


def trl_settings(name: str) -> dict:
    """TrainingArguments for TRL: "matched" (float32, no activation checkpointing: the computation
    our steps run) or "default" (TRL's own: bfloat16 autocast and activation checkpointing)."""
    if name not in TRL_SETTINGS:
        raise SystemExit(f"error: unknown TRL settings {name!r}; valid: {', '.join(TRL_SETTINGS)}")
    return dict(TRL_SETTINGS[name])


def trl_baseline_args(p, stage: str) -> None:
    """The flags the TRL baseline tools share: --config, --trl-settings, --steps (`stage`: the
    config block whose steps, epochs and optimizer the baseline copies)."""
    p.add_argument("--config", default="configs/instructgpt.py:smollm2_hh,cpu")
    p.add_argument("--trl-settings", default="matched", help="matched (float32, no activation checkpointing, as "
                   f"our {stage} stage runs: the default) or default (TRL's own: bfloat16 autocast and activation "
                   "checkpointing on every device)")
    p.add_argument("--steps", type=int, default=0, help="train this many steps (a timing probe; default: the "
                   f"config's {stage}.steps, else {stage}.epochs over the training rows)")
