"""The built-in task world: instructions a tiny model learns in minutes, a programmatic gold
reward, and simulated annotators, so the whole pipeline runs offline from a seed.

Tasks act on short lists of digits: `sort 3 1 2 =>` -> `1 2 3`, `reverse 3 1 2 =>` -> `2 1 3`,
`max 3 1 2 =>` -> `3`. The gold reward has two components:

    gold = correctness - length_coef * (extra tokens beyond the reference)

`correctness` is position-wise agreement of the response's digits (filler words such as
`sure` ignored) with the reference, over the longer of the two, so a truncated answer loses
credit; `extra` counts all tokens past the reference length (filler, repeated digits). Candidate responses for preference data are
perturbations of the reference whose length correlates with quality (truncations are short
and wrong), so a proxy reward model can pick up "longer is better" as a shortcut that the
gold reward punishes: the over-optimisation setting of Gao et al. (2022).

Annotators rank K responses by their own view of the gold reward: Bradley-Terry /
Plackett-Luce sampling at a temperature ("bt"), exact order with adjacent label flips
("flip"), or exact order ("argmax"). Each annotator can weigh length differently
(`disagreement`), and several can be combined by Borda consensus.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from rlhf_jax.data.records import ranking_pairs

TASKS = ("sort", "reverse", "max")
FILLERS = ("sure", "ok", "well", "so")
DIGITS = tuple(str(d) for d in range(10))
SEP = "=>"
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PERTURBATIONS = ("exact", "truncate", "corrupt", "swap", "filler", "repeat")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    tasks: tuple[str, ...] = TASKS
    min_items: int = 3
    max_items: int = 6
    length_coef: float = 0.1  # gold penalty per extra token
    annotator_model: str = "bt"  # bt | flip | argmax
    bt_temperature: float = 0.1  # P(a beats b) = sigmoid((g_a - g_b) / T)
    flip_rate: float = 0.0  # "flip": chance to swap each adjacent pair of the exact ranking
    n_annotators: int = 1
    disagreement: float = 0.0  # relative spread of each annotator's length_coef
    consensus: bool = False  # rank by Borda count over annotators instead of one annotator per prompt
    # kinds of perturbed answers used as candidates (and to fill rankings of too-similar samples)
    perturbations: tuple[str, ...] = ("exact", "truncate", "corrupt", "swap", "filler", "repeat")

    def __post_init__(self):
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"tasks {sorted(unknown)} are not among {TASKS}")
        if self.annotator_model not in ("bt", "flip", "argmax"):
            raise ValueError(f"annotator_model={self.annotator_model!r} must be bt, flip or argmax")
        if not 1 <= self.min_items <= self.max_items <= 9:
            raise ValueError("need 1 <= min_items <= max_items <= 9")
        unknown = set(self.perturbations) - set(PERTURBATIONS)
        if unknown or not self.perturbations:
            raise ValueError(f"perturbations {sorted(unknown)} must be a non-empty subset of {PERTURBATIONS}")


def vocabulary() -> list[str]:
    return list(SPECIALS) + list(TASKS) + list(DIGITS) + list(FILLERS) + [SEP]


def tokenizer():
    """A word-level `transformers` tokenizer over the world's vocabulary (save_pretrained works)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def solve(task: str, items: list[str]) -> list[str]:
    digits = [int(x) for x in items]
    if task == "sort":
        return [str(d) for d in sorted(digits)]
    if task == "reverse":
        return items[::-1]
    return [str(max(digits))]


def parse_prompt(prompt: str) -> tuple[str, list[str]]:
    words = prompt.split()
    if len(words) < 3 or words[0] not in TASKS or words[-1] != SEP:
        raise ValueError(f"not a task-world prompt: {prompt!r}")
    return words[0], words[1:-1]


def gold_components(prompt: str, response: str) -> dict[str, float]:
    """correctness in [0, 1] and extra (tokens beyond the reference length)."""
    task, items = parse_prompt(prompt)
    ref = solve(task, items)
    words = response.split()
    content = [w for w in words if w not in FILLERS]
    hits = sum(1 for a, b in zip(content, ref) if a == b)
    return {"correctness": hits / max(len(content), len(ref)), "extra": float(max(0, len(words) - len(ref))),
            "length": float(len(words))}


def gold_reward(prompt: str, response: str, length_coef: float = 0.1) -> float:
    c = gold_components(prompt, response)
    return c["correctness"] - length_coef * c["extra"]


def _rng(cfg: WorldConfig, stream: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{cfg.seed}/{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _prompt(rng, cfg: WorldConfig) -> tuple[str, str]:
    task = cfg.tasks[rng.integers(len(cfg.tasks))]
    items = [str(d) for d in rng.integers(0, 10, rng.integers(cfg.min_items, cfg.max_items + 1))]
    return f"{task} {' '.join(items)} {SEP}", " ".join(solve(task, items))


def prompts(cfg: WorldConfig, n: int, split: str = "train") -> list[dict]:
    """Prompt records with their reference answers."""
    rng = _rng(cfg, "prompts/" + split)
    return [dict(zip(("prompt", "reference"), _prompt(rng, cfg))) for _ in range(n)]


def sft_records(cfg: WorldConfig, n: int, split: str = "train") -> list[dict]:
    """Demonstrations: prompt -> the reference answer."""
    rng = _rng(cfg, "sft/" + split)
    return [dict(zip(("prompt", "completion"), _prompt(rng, cfg))) for _ in range(n)]


PRETRAIN_MAX_ITEMS = 9  # a solved example of 9 items is 20 words: with EOS within the default max_len 24


def pretrain_records(cfg: WorldConfig, n: int, split: str = "train") -> list[dict]:
    """The world's pretraining text (what PPO-ptx trains on, apart from the demonstrations and
    the evaluation): documents from their own generator, half of them solved examples of any
    task on 1..9 items written as running text (the demonstrations hold min_items..max_items,
    and answer only), half of them runs of consecutive digits, up or down, of 3..9 digits (text
    no demonstration holds). Records are {"prompt": "", "completion": text}: every token is in
    the loss, as in language-model pretraining. Splits ("train", "val") are disjoint streams."""
    rng = _rng(cfg, "pretrain/" + split)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            task = cfg.tasks[rng.integers(len(cfg.tasks))]
            items = [str(d) for d in rng.integers(0, 10, rng.integers(1, PRETRAIN_MAX_ITEMS + 1))]
            text = f"{task} {' '.join(items)} {SEP} {' '.join(solve(task, items))}"
        else:
            length = int(rng.integers(3, PRETRAIN_MAX_ITEMS + 1))
            start = int(rng.integers(0, 11 - length))
            run = [str(d) for d in range(start, start + length)]
            text = " ".join(run if rng.random() < 0.5 else run[::-1])
        out.append({"prompt": "", "completion": text})
    return out


def perturb(reference: str, rng: np.random.Generator, kinds: tuple[str, ...] = PERTURBATIONS) -> str:
    """One plausible policy output: correct, truncated, corrupted, swapped, or padded with filler."""
    words = reference.split()
    kind = kinds[rng.integers(len(kinds))]
    if kind == "truncate" and len(words) > 1:
        words = words[: rng.integers(1, len(words))]
    elif kind == "corrupt":
        words = list(words)
        words[rng.integers(len(words))] = DIGITS[rng.integers(10)]
    elif kind == "swap" and len(words) > 1:
        i = rng.integers(len(words) - 1)
        words = words[:i] + [words[i + 1], words[i]] + words[i + 2:]
    elif kind == "filler":
        words = [FILLERS[rng.integers(len(FILLERS))]] + words
    elif kind == "repeat":
        words = words + [words[-1]]
    return " ".join(words)


def candidates(reference: str, k: int, rng: np.random.Generator,
               kinds: tuple[str, ...] = PERTURBATIONS) -> list[str]:
    """k distinct responses (the reference may or may not be among them)."""
    out: list[str] = []
    for _ in range(50 * k):
        c = perturb(reference, rng, kinds)
        if c not in out:
            out.append(c)
        if len(out) == k:
            return out
    while len(out) < k:  # tiny answer spaces (e.g. "max") run out of distinct perturbations
        out.append(" ".join([FILLERS[len(out) % len(FILLERS)]] * (len(out) + 1) + reference.split()))
    return out


def annotate(prompt: str, responses: list[str], cfg: WorldConfig, rng: np.random.Generator,
             who: int | None = None) -> list[int]:
    """Dense ranks (0 best) of `responses` from the simulated annotator(s); `who` fixes the
    annotator (its own length weight) instead of drawing one per prompt."""
    rankings = []
    n = cfg.n_annotators if cfg.consensus else 1
    for a in range(n):
        annotator = a if cfg.consensus else who if who is not None else int(rng.integers(cfg.n_annotators))
        coef = cfg.length_coef * (1 + cfg.disagreement * _annotator_bias(cfg, annotator))
        g = np.array([gold_reward(prompt, r, coef) for r in responses])
        if cfg.annotator_model == "bt":
            order = np.argsort(-(g / cfg.bt_temperature + rng.gumbel(size=len(g))), kind="stable")
        else:
            order = list(np.argsort(-g, kind="stable"))
            if cfg.annotator_model == "flip":
                for i in range(len(order) - 1):
                    if rng.random() < cfg.flip_rate:
                        order[i], order[i + 1] = order[i + 1], order[i]
        ranks = np.empty(len(g), int)
        ranks[np.asarray(order)] = np.arange(len(g))
        rankings.append(ranks)
    if n == 1:
        return rankings[0].tolist()
    borda = np.sum(rankings, axis=0)
    _, dense = np.unique(borda, return_inverse=True)  # equal Borda scores are ties
    return dense.tolist()


def _annotator_bias(cfg: WorldConfig, annotator: int) -> float:
    return float(_rng(cfg, f"annotator/{annotator}").standard_normal())


def fill_responses(cfg: WorldConfig, prompt: str, drawn: list[str], k: int, rng: np.random.Generator) -> list[str]:
    """k distinct non-empty responses: the first distinct `drawn` ones (policy samples), the
    slots left filled with perturbations of the answer."""
    responses = list(dict.fromkeys(s for s in drawn if s.strip()))[:k]
    task, items = parse_prompt(prompt)
    for extra in candidates(" ".join(solve(task, items)), 2 * k, rng, cfg.perturbations):
        if len(responses) >= k:
            break
        if extra not in responses:
            responses.append(extra)
    return responses


def rank_samples(cfg: WorldConfig, prompts: list[str], samples: list[list[str]], k: int,
                 split: str = "train") -> list[dict]:
    """K-wise rankings of policy samples (InstructGPT: labelers rank K outputs of the SFT model).

    Duplicate or empty samples are dropped and the slots filled with perturbations of the
    answer, so every prompt has k distinct responses.
    """
    rng = _rng(cfg, "policy_rankings/" + split)
    out = []
    for prompt, drawn in zip(prompts, samples):
        responses = fill_responses(cfg, prompt, drawn, k, rng)
        ranks = annotate(prompt, responses, cfg, rng)
        if len(set(ranks)) >= 2:
            out.append({"prompt": prompt, "responses": responses, "ranks": ranks})
    return out


def ranking_records(cfg: WorldConfig, n: int, k: int = 4, split: str = "train") -> list[dict]:
    """K-wise rankings of perturbed responses by the simulated annotators."""
    if not 2 <= k <= 9:
        raise ValueError(f"k={k} must be 2..9")
    rng = _rng(cfg, "rankings/" + split)
    out = []
    for _ in range(n):
        prompt, reference = _prompt(rng, cfg)
        responses = candidates(reference, k, rng, cfg.perturbations)
        ranks = annotate(prompt, responses, cfg, rng)
        if len(set(ranks)) < 2:
            continue
        out.append({"prompt": prompt, "responses": responses, "ranks": ranks})
    return out


def finegrained_records(cfg: WorldConfig, n: int, split: str = "train") -> list[dict]:
    """Perturbed answers with word-level error spans, as a span annotator would mark them (the
    fine_grained record kind): "wrong" on a digit that differs from the reference item at its
    position, "extra" on a filler word and on every digit past the reference length. Missing
    items (a truncated answer) are no span: only a whole-response judgement sees them."""
    rng = _rng(cfg, "finegrained/" + split)
    out = []
    for _ in range(n):
        prompt, reference = _prompt(rng, cfg)
        response = perturb(reference, rng, cfg.perturbations)
        out.append({"prompt": prompt, "response": response, "spans": error_spans(prompt, response)})
    return out


def error_spans(prompt: str, response: str) -> list[dict]:
    """The span oracle: "wrong" on a digit that differs from the reference item at its position,
    "extra" on a filler word and on every word past the reference length (character offsets in
    the response with words joined by single spaces). Works on any response, a policy's too."""
    reference = solve(*parse_prompt(prompt))
    spans, start, item = [], 0, 0
    for word in response.split():
        if word in FILLERS:
            category = "extra"
        else:
            category = "extra" if item >= len(reference) else "wrong" if word != reference[item] else None
            item += 1
        if category:
            spans.append({"start": start, "end": start + len(word), "category": category})
        start += len(word) + 1
    return spans


def pair_records(cfg: WorldConfig, n: int, split: str = "train") -> list[dict]:
    """Pairwise preferences (K = 2 rankings)."""
    out = []
    for r in ranking_records(cfg, n, 2, split):
        (w, l), = ranking_pairs(r["ranks"])
        out.append({"prompt": r["prompt"], "chosen": r["responses"][w], "rejected": r["responses"][l]})
    return out
