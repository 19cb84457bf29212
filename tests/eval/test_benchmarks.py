"""benchmarks.py: TruthfulQA MC against transformers on the same weights; (LC) win rates."""
import numpy as np
import pytest

from rlhf_jax.data import corpora
from rlhf_jax.eval import benchmarks
from rlhf_jax.eval.judges import FunctionJudge
from tests import tolerance as tol


def test_mc_scores_by_hand():
    logprobs = [-1.0, -2.0, -0.5]  # two true answers (the first is the best), one false
    mc1, mc2 = benchmarks.mc_scores(logprobs, [1, 1, 0], best=0)
    assert mc1 == 0.0  # -1.0 does not beat the false answer's -0.5
    e = np.exp
    assert mc2 == pytest.approx((e(-1) + e(-2)) / (e(-1) + e(-2) + e(-0.5)))
    assert benchmarks.mc_scores([-0.4, -2.0, -0.5], [1, 1, 0], best=0)[0] == 1.0


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    """A tiny random GPT-2 (the real 50,257-token vocabulary) in transformers and in our decoder."""
    torch = pytest.importorskip("torch")
    import transformers as T
    from rlhf_jax.models import load_pretrained
    torch.manual_seed(0)
    ref = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=50257, n_positions=512, n_embd=32, n_layer=2, n_head=4,
                                         resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.3 if p.ndim == 1 else 0.1)
    ref.eval()
    path = tmp_path_factory.mktemp("gpt2")
    ref.save_pretrained(path)
    ours, _ = load_pretrained(path, load_tokenizer=False)
    return ref, ours


def _torch_logprob(ref, context, continuation):
    """Sum of log p(continuation | context), one unpadded row through transformers."""
    import torch
    ids = torch.tensor([list(context) + list(continuation)])
    with torch.no_grad():
        logp = torch.log_softmax(ref(ids).logits[0].double(), -1)
    start = len(context)
    return sum(float(logp[start + j - 1, t]) for j, t in enumerate(continuation))


@pytest.mark.parametrize("prompt_format", ["qa_primer", "chat:hh"])
def test_truthfulqa_mc_matches_transformers(gpt2_pair, shared_data, prompt_format):
    ref, ours = gpt2_pair
    tok = corpora.gpt2_tokenizer(shared_data)
    items, _ = corpora.truthfulqa(shared_data)
    items = items[:4]
    result = benchmarks.truthfulqa_mc(ours, tok, items, prompt_format=prompt_format, batch_size=16,
                                      n_resamples=200)
    assert result["format"] == prompt_format and result["n"] == 4

    # independently: prompt strings built here, every answer scored unpadded by torch
    mc1_expected, mc2_expected, mc2_tol = [], [], []
    for item, got in zip(items, result["per_item"]):
        if prompt_format == "qa_primer":
            context = tok(benchmarks.QA_PRIMER + "\n\nQ: " + item["question"] + "\nA:")["input_ids"]
            prefix = " "
        else:  # the "hh" template "\n\nHuman: {question}\n\nAssistant: ", each piece encoded on its own
            context = [i for piece in ("\n\nHuman: ", item["question"], "\n\nAssistant: ")
                       for i in tok(piece)["input_ids"]]
            prefix = ""
        answers = [c.strip() if c.strip().endswith(".") else c.strip() + "." for c in item["choices"]]
        scores = np.array([_torch_logprob(ref, context, tok(prefix + a)["input_ids"]) for a in answers])
        labels = np.array(item["labels"], bool)
        best = item["choices"].index(item["best_answer"])
        # per answer token: our float32 log-sum-exp over 50,257 positive terms (torch's is float64)
        # plus the forward chain at the logits' size (< 10 here), summed over the answer's tokens
        per_token = tol.f32(50257) / 2 + tol.forward(ours.cfg, len(context) + 32, 10.0)
        atol = per_token * np.array([len(tok(prefix + a)["input_ids"]) for a in answers])
        err = np.abs(np.asarray(got["logprobs"]) - scores)
        assert np.all(err <= atol), (err, atol)
        mc2_tol.append(atol.max())  # mc2, a ratio of sums of exp(score): moves by < max |score error|
        mc1_expected.append(float(scores[best] > scores[~labels].max()))
        p = np.exp(scores)
        mc2_expected.append(p[labels].sum() / p.sum())
    np.testing.assert_array_equal([r["mc1"] for r in result["per_item"]], mc1_expected)
    err = np.abs(np.array([r["mc2"] for r in result["per_item"]]) - mc2_expected)
    assert np.all(err <= np.array(mc2_tol)), (err, mc2_tol)
    assert result["mc2"]["value"] == pytest.approx(np.mean(mc2_expected), abs=max(mc2_tol))
    assert result["mc1"]["value"] == pytest.approx(np.mean(mc1_expected))


def _synthetic(n, length_coef, intercept, seed):
    """Judgements drawn from the AlpacaEval-2 GLM: logit = intercept + coef * tanh(delta / std)."""
    rng = np.random.default_rng(seed)
    len_ref = rng.integers(200, 600, n).astype(float)
    delta = rng.normal(150, 150, n)  # the model is usually longer
    len_model = len_ref + delta
    d = len_model - len_ref
    logit = intercept + length_coef * np.tanh(d / d.std(ddof=1))
    wins = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return wins, len_model, len_ref


def test_length_controlled_win_rate_removes_a_pure_length_preference():
    wins, lm, lr = _synthetic(2000, length_coef=3.0, intercept=0.0, seed=0)
    out = benchmarks.length_controlled_win_rate(wins, lm, lr, n_resamples=100)
    assert out["win_rate"]["value"] > 0.7  # raw: verbosity wins
    # sampling tolerances (one seeded sample of 2,000): a rate's standard error at 0.5 is 0.011
    assert out["lc_win_rate"]["value"] == pytest.approx(0.5, abs=0.04)
    assert out["lc_win_rate"]["low"] < 0.5 < out["lc_win_rate"]["high"]
    assert out["fit"]["length_coef"] == pytest.approx(3.0, abs=0.5)


def test_length_controlled_equals_raw_when_preference_ignores_length():
    wins, lm, lr = _synthetic(2000, length_coef=0.0, intercept=np.log(0.7 / 0.3), seed=1)
    out = benchmarks.length_controlled_win_rate(wins, lm, lr, n_resamples=100)
    assert out["win_rate"]["value"] == pytest.approx(0.7, abs=0.03)  # 3 standard errors (0.010) at n = 2,000
    assert out["lc_win_rate"]["value"] == pytest.approx(out["win_rate"]["value"], abs=0.02)


def test_alpaca_eval_on_the_reference_file_with_a_length_judge(shared_data):
    records, report = corpora.alpaca_eval(shared_data, policy="skip")  # two davinci-003 outputs are empty
    assert report.kept == 803
    records = records[:60]
    # the "model" repeats the reference's first sentence (longer) on 2 of 3 prompts, drops half of it otherwise
    outputs = [r["reference"] + " " + r["reference"].split(".")[0] if i % 3
               else r["reference"][:len(r["reference"]) // 2] for i, r in enumerate(records)]
    judge = FunctionJudge(lambda prompts, responses: [len(x) for x in responses])
    out = benchmarks.alpaca_eval(judge, records, outputs, n_resamples=100)
    expected = [float(len(o) > len(r["reference"])) + 0.5 * (len(o) == len(r["reference"]))
                for o, r in zip(outputs, records)]
    np.testing.assert_array_equal(out["preferences"], expected)
    assert out["win_rate"]["value"] == pytest.approx(np.mean(expected))
    assert out["win_rate"]["value"] == pytest.approx(40 / 60)
    # lengths are characters, the GLM is fitted on them (a deterministic length judge separates the
    # data perfectly, so only the sign of the length term is asserted here; see the synthetic tests)
    direct = benchmarks.length_controlled_win_rate(expected, [len(o) for o in outputs],
                                                   [len(r["reference"]) for r in records], n_resamples=100)
    assert out["lc_win_rate"] == direct["lc_win_rate"]
    assert out["n"] == 60 and out["fit"]["length_coef"] > 1.0


def test_alpaca_eval_records_count_and_report_the_empty_references(shared_data):
    records, load = benchmarks.alpaca_eval_records(data_dir=shared_data)
    assert (load["read"], load["kept"], load["evaluated"], len(records)) == (805, 803, 803, 803)
    assert load["skipped"] == {"empty_reference": 2} and load["first_skipped"] == {"empty_reference": "row 247"}
    assert load["policy"].startswith("skip")
    assert all(r["reference"].strip() for r in records)
    first, load = benchmarks.alpaca_eval_records(100, data_dir=shared_data)
    assert load["evaluated"] == 100 and first == records[:100]
    judge = FunctionJudge(lambda prompts, responses: [len(x) for x in responses])
    with pytest.raises(ValueError, match=r"records \[1\] have an empty reference"):
        benchmarks.alpaca_eval(judge, [records[0], {**records[1], "reference": " "}], ["a", "b"], n_resamples=10)


def test_alpaca_eval_of_several_policies_fits_the_instruction_difficulty_across_them(shared_data):
    records, _ = benchmarks.alpaca_eval_records(80, data_dir=shared_data)
    rng = np.random.default_rng(0)
    cut = lambda text, frac: text[:max(1, int(len(text) * frac))]
    short, extra = rng.uniform(0.3, 1.2, 80), rng.uniform(0, 0.5, 80)
    outputs = {"short": [cut(r["reference"], f) for r, f in zip(records, short)],
               "long": [r["reference"] + " " + cut(r["reference"], f) for r, f in zip(records, extra)]}
    # a judge preferring the longer text on most prompts and the shorter on the rest (deterministic per text)
    judge = FunctionJudge(lambda prompts, responses: [len(x) * (1 if len(p) % 4 else -1)
                                                      for p, x in zip(prompts, responses)])
    out = benchmarks.alpaca_eval_policies(judge, records, outputs, n_resamples=50)
    refs = [len(r["reference"]) for r in records]
    prefs, deltas = [], []
    for name, texts in outputs.items():
        expected = judge.compare([r["prompt"] for r in records], texts, [r["reference"] for r in records])
        np.testing.assert_array_equal(out[name]["preferences"], expected)
        assert out[name]["mean_length_model"] == pytest.approx(np.mean([len(t) for t in texts]))  # characters
        assert out[name]["instruction_term"] is True
        prefs.append(expected)
        deltas.append(np.array([len(t) for t in texts]) - refs)
    gamma = benchmarks.instruction_difficulty(prefs, deltas)
    direct = benchmarks.length_controlled_win_rate(prefs[1], deltas[1] + np.array(refs), refs, gamma, n_resamples=50)
    assert out["long"]["lc_win_rate"] == direct["lc_win_rate"]
    single = benchmarks.alpaca_eval_policies(judge, records, {"long": outputs["long"]}, n_resamples=50)
    assert single["long"]["instruction_term"] is False and single["long"]["fit"]["instruction_coef"] == 0.0
