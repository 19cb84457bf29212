"""Stage active (rounds of label, retrain, select): the evaluation and labelling pieces against
hand-computed cases, the config checks, and micro runs on the fixture's SFT policy: the budgets
are met with no comparison labelled twice, every strategy shares the first round, and a run
stopped after a round resumes to the rows of an uninterrupted one."""
import json
import shutil

import numpy as np
import pytest

from configs.ablations.active import get_config
from rlhf_jax.data import synthetic
from rlhf_jax.errors import ConfigError
from rlhf_jax.stages import active
from rlhf_jax.stages import run as run_pipeline
from rlhf_jax.stages.validate import validate_config


def test_pair_accuracy_by_hand():
    scores = np.array([[3.0, 1.0, 2.0], [0.0, 1.0, 1.0]])
    gold = np.array([[1.0, 0.0, 0.5], [0.2, 0.2, 0.9]])
    labels = np.zeros((2, 3, 3), np.int8)
    labels[0, 0, 1] = labels[0, 0, 2] = 1  # the annotator: 0 > 1, 0 > 2, 2 > 1 ...
    labels[1, 0, 1] = 1  # ... and 0 > 1, 2 > 0, 2 > 1
    out = active.pair_accuracy(scores, gold, labels)
    # gold, untied pairs: p0 (0,1) (0,2) (1,2) ordered as the scores (3 of 3); p1 (0,1) is a gold tie
    # (left out), (0,2) agrees (-1 and -0.7), (1,2) has equal scores: half -> 4.5 of 5
    assert out["eval_pairs_untied"] == 5
    assert out["accuracy_gold"] == pytest.approx(4.5 / 5)
    # annotator labels: p0 all three agree; p1 (0,1) label "0 wins" vs score 0 - 1 < 0: no; (0,2) label
    # "2 wins" vs -1: yes; (1,2) equal scores: half -> 4.5 of 6
    assert out["accuracy_annotator"] == pytest.approx(4.5 / 6)


def test_pair_accuracy_counts_a_wrong_order():
    out = active.pair_accuracy(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]), np.zeros((1, 2, 2), np.int8))
    assert out["accuracy_gold"] == 0.0 and out["accuracy_annotator"] == 1.0  # label 0: the annotator chose 1


class _Ctx:
    def __init__(self, world, clusters="prompt"):
        self.world = world
        self.config = get_config("micro")
        self.config.active.clusters = clusters


POOL = [{"prompt": "sort 3 1 2 =>", "responses": ["1 2 3", "1 2", "3 1 2", "sure 1 2 3"]},
        {"prompt": "max 3 1 2 =>", "responses": ["3", "1", "3 3", "2"]}]


def test_label_puts_the_winner_first():
    world = synthetic.WorldConfig(annotator_model="argmax")
    chosen = np.array([[0, 0, 1], [0, 2, 3], [1, 1, 0], [1, 0, 2]])
    out = active.label(_Ctx(world), POOL, chosen, np.random.default_rng(0))
    # gold: sort: "1 2 3" 1.0, "1 2" 2/3, "3 1 2" 1/3, "sure 1 2 3" 1.0 - 0.1 = 0.9; max: "3" 1, "1" 0,
    # "3 3" 0.5 - 0.1 = 0.4
    assert out == [[0, 0, 1], [0, 3, 2], [1, 0, 1], [1, 0, 2]]
    flipped = active.label(_Ctx(synthetic.WorldConfig(annotator_model="flip", flip_rate=1.0)), POOL, chosen,
                           np.random.default_rng(0))
    assert flipped == [[0, 1, 0], [0, 2, 3], [1, 1, 0], [1, 2, 0]]


def test_a_tie_is_spent_but_marked(monkeypatch):
    monkeypatch.setattr(synthetic, "annotate", lambda prompt, responses, cfg, rng: [0, 0])
    out = active.label(_Ctx(synthetic.WorldConfig()), POOL, np.array([[1, 2, 3]]), np.random.default_rng(0))
    assert out == [[1, 2, 3, -1]]


def test_task_clusters():
    pool = [{"prompt": p} for p in ("sort 1 2 3 =>", "max 1 2 3 =>", "sort 4 5 6 =>", "sort 1 2 3 4 =>")]
    assert active.clusters(_Ctx(None, "task"), pool).tolist() == [0, 1, 0, 2]
    assert active.clusters(_Ctx(None, "prompt"), pool).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("field,value,message", [
    ("strategy", "entropy", r"active\.strategy: must be one of \('random', 'uncertainty', 'disagreement', "
                            r"'diverse_disagreement'\)"),
    ("budgets", "32,32", r"active\.budgets: '32,32' must be increasing"),
    ("budgets", "16,x", r"active\.budgets: '16,x' must be increasing"),
    ("budgets", "16,200", r"active\.budgets: 200 comparisons exceed the pool's 32 x C\(4, 2\) candidates"),
    ("budgets", "8,16", r"active\.budgets: the first budget cannot fill one batch of 16"),
    ("clusters", "kmeans", r"active\.clusters: must be one of \('prompt', 'task'\)"),
])
def test_config_errors_name_the_field(field, value, message):
    c = get_config("disagreement,micro")
    c.active[field] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(c)


def test_disagreement_needs_an_ensemble():
    c = get_config("disagreement,micro")
    c.active.members = 1
    with pytest.raises(ConfigError, match=r"active\.members: strategy 'disagreement' needs an ensemble"):
        validate_config(c)
    c.active.strategy = "uncertainty"  # a single RM's uncertainty is fine
    validate_config(c)


def _run(source, workdir, strategy):
    shutil.copytree(source / "sft", workdir / "sft")
    c = get_config(f"{strategy},micro")
    c.active.update(min_steps=2)  # 2 steps a round: the test checks the bookkeeping, not the RMs
    return run_pipeline(c, workdir, use_wandb=False)["active"]


def _key(row):
    return tuple(row[:3]) if row[1] < row[2] else (row[0], row[2], row[1])


def _rows(workdir):
    rows = [json.loads(line) for line in (workdir / "active" / "rounds.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


def test_rounds_meet_the_budgets_and_resume(micro_trained, tmp_path, monkeypatch):
    source, _ = micro_trained
    summary = _run(source, tmp_path / "dis", "disagreement")
    state = json.loads((tmp_path / "dis" / "active" / "state.json").read_text())
    rows = _rows(tmp_path / "dis")
    assert [r["labelled"] for r in rows] == summary["budgets"] == [16, 32, 48]
    assert len(state["labels"]) == 48 and len({_key(x) for x in state["labels"]}) == 48  # none labelled twice
    assert all(np.isfinite(r["accuracy_gold"]) and np.isfinite(r["bon_gold"]) for r in rows)
    assert summary["accuracy_gold_b48"] == rows[-1]["accuracy_gold"]
    # random selection shares the first round's labels (the strategies are paired by seed)
    _run(source, tmp_path / "rnd", "random")
    other = json.loads((tmp_path / "rnd" / "active" / "state.json").read_text())
    assert other["labels"][:16] == state["labels"][:16] and other["labels"][16:] != state["labels"][16:]
    first = ("labelled", "train_loss", "accuracy_gold", "accuracy_annotator", "bon_gold")  # before any selection
    assert {k: _rows(tmp_path / "rnd")[0][k] for k in first} == {k: rows[0][k] for k in first}
    # a run stopped during round 2 resumes after round 1 and ends as the uninterrupted run did
    real = active.train_members

    def stop_in_round_2(ctx, pool, labels, round_, compiled):
        if round_ == 2:
            raise KeyboardInterrupt
        return real(ctx, pool, labels, round_, compiled)

    monkeypatch.setattr(active, "train_members", stop_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        _run(source, tmp_path / "again", "disagreement")
    assert json.loads((tmp_path / "again" / "active" / "state.json").read_text())["round"] == 1
    monkeypatch.setattr(active, "train_members", real)
    c = get_config("disagreement,micro")
    c.active.update(min_steps=2)
    run_pipeline(c, tmp_path / "again", use_wandb=False)
    assert _rows(tmp_path / "again") == rows
    assert json.loads((tmp_path / "again" / "active" / "state.json").read_text())["labels"] == state["labels"]
