"""Prompts from the config's templates, and the Self-Instruct bootstrapping draw of in-context examples.

A prompt is (messages, prefix): chat messages [{role, content}] the generator renders with the
tokenizer's chat template, and the text the assistant turn starts with (the model continues it, which
keeps a small model on the format). Templates are `str.format` strings of configs/generate_data.py.
"""
from __future__ import annotations

import random
from typing import Sequence

from rlhf_jax.errors import ConfigError

Prompt = tuple[list[dict], str]


def fill(template: str, where: str, **fields) -> str:
    """template.format(**fields); a ConfigError naming the config field when it asks for another field."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError) as e:
        raise ConfigError(f"{where}: the template uses {{{e.args[0]}}}; the fields it may use are "
                          f"{sorted(fields)}") from None
    except ValueError as e:
        raise ConfigError(f"{where}: not a valid format string ({e}); write {{{{ and }}}} for braces") from None


def draw_examples(seeds: Sequence[dict], machine: Sequence[dict], k_seed: int, k_machine: int,
                  rng: random.Random) -> list[dict]:
    """The in-context tasks of one Self-Instruct prompt: k_seed human-written seed tasks and k_machine
    tasks accepted in earlier rounds, drawn without replacement (the paper: 6 + 2); while fewer than
    k_machine machine tasks exist, the rest come from the seeds, so a prompt always shows
    k_seed + k_machine tasks (fewer only when both pools together are smaller). Seeds first, then the
    machine tasks, as the paper orders them."""
    n_machine = min(k_machine, len(machine))
    n_seed = min(len(seeds), k_seed + k_machine - n_machine)
    return rng.sample(list(seeds), n_seed) + rng.sample(list(machine), n_machine)


def self_instruct_prompt(examples: Sequence[dict], s) -> Prompt:
    """The task-generation prompt over `examples` (dicts with 'instruction'); `s` is config.self_instruct."""
    k = len(examples)
    lines = "\n".join(fill(s.example, "self_instruct.example", i=i + 1, instruction=e["instruction"])
                      for i, e in enumerate(examples))
    fields = dict(k=k, examples=lines, n_new=s.new_per_prompt, next=k + 1)
    user = fill(s.user, "self_instruct.user", **fields)
    return ([{"role": "system", "content": s.system}, {"role": "user", "content": user}],
            fill(s.prefix, "self_instruct.prefix", **fields))


def instance_prompt(instruction: str, classification: bool, examples: Sequence[dict], s) -> Prompt:
    """The instance-generation prompt. Classification tasks are output-first: the example block and the
    prefix ask for the class label before the input (Wang et al. 2023, section 2.2)."""
    system, template, prefix = ((s.class_system, s.class_example, s.class_prefix) if classification else
                                (s.instance_system, s.instance_example, s.instance_prefix))
    where = "self_instruct." + ("class_example" if classification else "instance_example")
    shots = "\n\n".join(fill(template, where, instruction=e["instruction"], input=e["input"] or "<noinput>",
                             output=e["output"]) for e in examples)
    user = fill(s.instance_user, "self_instruct.instance_user", examples=shots, instruction=instruction)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], prefix


def is_classification_prompt(instruction: str, examples: Sequence[dict], s) -> Prompt:
    """Few-shot: is this a classification task? `examples` are seed tasks with 'is_classification'."""
    shots = "\n\n".join(fill(s.is_class_example, "self_instruct.is_class_example", instruction=e["instruction"],
                             answer="Yes" if e["is_classification"] else "No") for e in examples)
    user = fill(s.is_class_user, "self_instruct.is_class_user", examples=shots, instruction=instruction)
    return [{"role": "system", "content": s.is_class_system}, {"role": "user", "content": user}], s.is_class_prefix


def evol_prompt(instruction: str, operation: str, e) -> Prompt:
    """The rewrite prompt of one Evol-Instruct operation: an in-depth method, or 'breadth' (mutation)."""
    if operation == "breadth":
        text = fill(e.breadth, "evol_instruct.breadth", instruction=instruction)
    elif operation in e.methods:
        text = fill(e.depth, "evol_instruct.depth", instruction=instruction, method=e.methods[operation])
    else:
        raise ConfigError(f"evol_instruct.operations: {operation!r} is not 'breadth' or one of "
                          f"{sorted(e.methods)}")
    return [{"role": "user", "content": text}], ""


def response_prompt(prompt: str, system: str) -> Prompt:
    """Answer an instruction (Evol-Instruct's response to each evolved prompt)."""
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}], ""
