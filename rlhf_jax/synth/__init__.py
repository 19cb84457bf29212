"""Synthetic instruction data: Self-Instruct and Evol-Instruct generation, their filters and report.

- `templates.py`: prompts from the config's templates; the bootstrapping draw of in-context examples
- `generator.py`: any local instruct checkpoint, sampled in fixed-shape batches
- `parse.py`: reading the generator's text (task lists, instances, yes/no, rewrites)
- `filters.py`: the Self-Instruct filters and the Evol-Instruct elimination rules, pure functions
- `self_instruct.py`, `evol.py`: the generation loops
- `io.py`: seed tasks, instructions, JSONL; `report.py`: the diversity and quality report

The CLI is `python -m rlhf_jax.generate_data`; the prompts live in configs/generate_data.py.
"""
