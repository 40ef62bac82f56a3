"""The prefix-caching scorer: the same log-likelihoods as lm-eval's plain HFLM, from fewer tokens through the model."""

from __future__ import annotations

from collections import defaultdict

import pytest
from lm_eval.models.huggingface import HFLM

from platypus_nb import evaluate as ev
from platypus_nb.config import load_config
from platypus_nb.prefix_lm import PrefixCachingHFLM, common_prefix_length, prefix_groups, row_length


def test_common_prefix_length():
    assert common_prefix_length((1, 2, 3), (1, 2, 4, 5)) == 2
    assert common_prefix_length((1, 2), (1, 2, 3)) == 2
    assert common_prefix_length((), (1,)) == 0


@pytest.fixture(scope="module")
def scorers(smollm2_dir, tmp_path_factory):
    """Real SmolLM2-135M under both scorers, and lm-eval's own requests for 2 questions of every task (TruthfulQA 3,
    enough for its primer to be cached)."""
    ecfg = load_config("tiny", {"evaluate.limit": 2, "evaluate.task_limits": {"truthfulqa_mc2": 3},
                                "evaluate.mmlu_subjects": ["college_physics"],
                                "evaluate.num_fewshot": {"arc_challenge": 1, "hellaswag": 1, "mmlu": 2,
                                                         "truthfulqa_mc2": 0}}).evaluate
    plan = ev.prepare_tasks(ecfg, tmp_path_factory.mktemp("tasks"))
    tasks = ev.load_tasks(plan)
    model, tokenizer = ev.load_for_eval(ev.ModelToEvaluate("m", str(smollm2_dir), None, "base", None, ""), ecfg)
    requests = {}
    for task, objs in tasks.by_task.items():
        for obj in objs:
            obj.set_fewshot_seed(ev.LEADERBOARD_FEWSHOT_SEED)
            obj.build_all_requests(limit=plan.limits[task], rank=0, world_size=1)
            requests[task] = list(obj.instances)
    return ev.make_lm(model, tokenizer, ecfg, "hflm"), ev.make_lm(model, tokenizer, ecfg), model, requests


def test_every_loglikelihood_equals_plain_hflm(scorers):
    plain, fast, _, requests = scorers
    assert type(plain) is HFLM and type(fast) is PrefixCachingHFLM
    for task, reqs in requests.items():
        expected, got = plain.loglikelihood(reqs), fast.loglikelihood(reqs)
        assert len(got) == len(expected) == len(reqs) > 0
        for (ll_plain, greedy_plain), (ll_fast, greedy_fast) in zip(expected, got):
            assert ll_fast == pytest.approx(ll_plain, abs=1e-4), task
            assert greedy_fast == greedy_plain, task


def test_shared_prefixes_go_through_the_model_once(scorers):
    """TruthfulQA: the primer once for the 3 questions, then each question's context once with all its answers."""
    plain, fast, model, requests = scorers
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"].numel()),
                                           with_kwargs=True)
    try:
        fast.loglikelihood(requests["truthfulqa_mc2"])
    finally:
        hook.remove()
    answers = defaultdict(list)
    for r in requests["truthfulqa_mc2"]:
        context, continuation = fast._encode_pair(*r.args)
        answers[tuple(context)].append(continuation)
    assert len(answers) == 3
    shared = min(common_prefix_length(a, b) for a in answers for b in answers if a != b)
    plain_tokens = sum(len(c) + len(a) for c, conts in answers.items() for a in conts)
    # The shared prefix once, then one pass of 3 left-padded rows: each context's remainder and its answers.
    assert seen == [shared, 3 * max(row_length(c, shared, conts) for c, conts in answers.items())]
    assert shared > 150 and sum(seen) < plain_tokens / 3


def test_prefix_groups_keep_runs_sharing_enough_tokens():
    long = tuple(range(300))
    groups = prefix_groups(sorted([long + (1, 2), long + (3,), (7, 8), (9,)]))
    assert groups == [(300, [long + (1, 2), long + (3,)]), (0, [(7, 8), (9,)])]
    # A context equal to the shared prefix keeps its last token out of the prefix.
    assert prefix_groups([long, long + (5,)]) == [(299, [long, long + (5,)])]
    # 100 shared tokens over 2 contexts spare too few to pay for a pass of their own: batched whole instead.
    assert prefix_groups([long[:100] + (1,), long[:100] + (2,)]) == [(0, [long[:100] + (1,), long[:100] + (2,)])]


def test_eager_attention_gets_the_same_numbers(scorers, tiny_llama_dir):
    """Eager attention adds its mask to the scores (sdpa takes it as booleans): both masks must give HFLM's numbers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    reqs = scorers[3]["truthfulqa_mc2"] + scorers[3]["hellaswag"]
    kwargs = {"pretrained": model, "tokenizer": tokenizer, "batch_size": 8, "add_bos_token": False}
    expected, got = HFLM(**kwargs).loglikelihood(reqs), PrefixCachingHFLM(**kwargs).loglikelihood(reqs)
    assert [g for _, g in got] == [g for _, g in expected]
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in expected], abs=1e-4)
