"""Few-shot scoring with the shared prefix's KV cache equals scoring every whole prompt (fp32 on the CPU, within
TOLERANCE), on tiny random models with real tokenizers (Qwen3's; GPT-2's on a tiny Llama), for single-token
letters and multi-token (summed) options; the prefix runs once and is never changed by the batches."""

from __future__ import annotations

import pytest
import torch

from medtune.data import MCQExample
from medtune.evaluate import _single_token_logprobs, choice_logprobs
from medtune.evaluation.prefix import encode_prefix, prefix_for, shared_prefix_length
from medtune.modeling import load_base
from medtune.prompts import PromptTemplate, template_for

TOLERANCE = 1e-4  # fp32; measured differences are ~1e-6 (the same sums in another order)


def _questions(n: int, prefix: str = "q") -> list[MCQExample]:
    return [MCQExample(f"{prefix}{i}", "Which nerve supplies the muscle?" + " It is long." * (i % 4),
                       tuple(f"option {i} {j}" for j in range(2 + i % 3)), i % 2, subject="anatomy")
            for i in range(n)]


def _shots(k: int) -> list[MCQExample]:
    return [MCQExample(f"dev{i}", f"Exemplar question {i} about the brachial plexus?",
                       ("ulnar", "radial", "median", "axillary"), i % 4, subject="anatomy") for i in range(k)]


@pytest.fixture(scope="module")
def qwen(tiny_qwen3):
    model, tokenizer, _ = load_base(str(tiny_qwen3))
    return model, tokenizer


@pytest.fixture(scope="module")
def llama_gpt2(gpt2_tokenizer):
    """A 2-layer random Llama over GPT-2's vocabulary and tokenizer (another BPE, another architecture)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(gpt2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
                         attn_implementation="eager")
    return LlamaForCausalLM(config).eval(), gpt2_tokenizer


def _templates(tokenizer) -> dict[str, PromptTemplate]:
    harness = PromptTemplate(format="harness").for_task("mmlu_anatomy")
    plain = PromptTemplate(format="plain")
    found = {"harness": harness, "plain": plain}
    if getattr(tokenizer, "chat_template", None):
        found["chat"] = template_for(tokenizer, "chat")
    return {name: template.with_fewshot(_shots(5), "dev") for name, template in found.items()}


@pytest.mark.parametrize("family", ["qwen", "llama_gpt2"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_cached_prefix_letter_scores_equal_uncached_scores(family, attention, request):
    model, tokenizer = request.getfixturevalue(family)
    model.set_attn_implementation(attention)
    examples = _questions(7)
    for name, template in _templates(tokenizer).items():
        stats = {}
        cached = choice_logprobs(model, tokenizer, template, examples, 3, stats=stats)
        reference = torch.stack([choice_logprobs(model, tokenizer, template, [e], 1)[0] for e in examples])
        assert stats["cached_prefix_tokens"] >= 5 * 10, name  # five exemplars are in the prefix
        assert torch.allclose(cached, reference, atol=TOLERANCE), (name, (cached - reference).abs().max())
        assert torch.equal(torch.isinf(cached), torch.isinf(reference))  # the same options per question


def test_cached_prefix_summed_scores_equal_uncached_scores(qwen):
    """Harness PubMedQA with multi-token options: each (context + option) row reads the cached exemplars."""
    model, tokenizer = qwen
    options = ("yes, clearly", "no", "maybe, the evidence is weak")
    shots = [MCQExample(f"s{i}", f"Does drug {i} work?", options, i % 3, context=f"Abstract {i} text.") for i in
             range(3)]
    examples = [MCQExample(f"p{i}", f"Is finding {i} real?" + " Really?" * i, options, i % 3,
                           context="A trial found effects." * (1 + i % 2)) for i in range(5)]
    template = PromptTemplate(format="harness").for_task("pubmedqa").with_fewshot(shots, "train")
    assert len(tokenizer.encode(" maybe, the evidence is weak", add_special_tokens=False)) > 1
    stats = {}
    cached = choice_logprobs(model, tokenizer, template, examples, 4, stats=stats)
    reference = torch.stack([choice_logprobs(model, tokenizer, template, [e], 1)[0] for e in examples])
    assert stats["cached_prefix_tokens"] > 30 and stats["computed_tokens"] < stats["prompt_tokens"]
    assert torch.allclose(cached, reference, atol=TOLERANCE), (cached - reference).abs().max()


def test_the_prefix_runs_once_and_every_batch_reads_only_suffixes(qwen):
    model, tokenizer = qwen
    template = _templates(tokenizer)["harness"]
    examples = _questions(6)
    widths = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, out: widths.append(out.shape[:2]))
    try:
        stats = {}
        choice_logprobs(model, tokenizer, template, examples, 2, stats=stats)
    finally:
        hook.remove()
    prefix = stats["cached_prefix_tokens"]
    longest = max(len(tokenizer.encode(template.prompt(e))) for e in examples)
    assert widths[0] == (1, prefix)  # the prefix, once
    assert all(rows <= 2 and width <= longest - prefix for rows, width in widths[1:])  # then suffixes only
    assert stats["computed_tokens"] == prefix + stats["prompt_tokens"] - len(examples) * prefix


def test_the_cached_prefix_is_not_changed_by_the_batches(qwen):
    model, tokenizer = qwen
    template = _templates(tokenizer)["harness"]
    prompts = [tokenizer.encode(template.prompt(e)) for e in _questions(5)]
    prefix = prefix_for(model, prompts, [1] * len(prompts))
    before = [(k.clone(), v.clone()) for k, v in prefix.layers]
    from medtune.evaluation.prefix import collate_suffixes

    for rows in ([0, 1], [2, 3, 4], [0]):  # batches of different sizes from the same prefix
        batch = collate_suffixes(prefix, [prompts[i][prefix.length:] for i in rows], 0, "cpu")
        model(**batch, logits_to_keep=1, use_cache=False)
        assert batch["cache"].get_seq_length() > prefix.length  # the batch's own cache grew...
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(prefix.layers, before))
    assert all(k.shape[0] == 1 for k, _ in prefix.layers)  # ...the shared one did not


def test_a_token_merge_across_the_exemplars_end_shortens_the_prefix_and_scores_stay_equal(llama_gpt2):
    """GPT-2 reads " B" + "ones" as one token " Bones": a question that continues the exemplars' last word changes
    the prefix's last token, so the shared prefix stops before it and that question still reads its own tokens."""
    model, tokenizer = llama_gpt2
    shared = "".join(f"Question {i}: which nerve?\nAnswer: B\n" for i in range(4)) + "Note: B"
    texts = [shared + tail for tail in ("\nQuestion: the ulnar?\nAnswer:", "ones?\nAnswer:",
                                        "\nQuestion: the radial nerve?\nAnswer:")]
    prompts = [tokenizer.encode(text) for text in texts]
    alone = tokenizer.encode(shared)
    assert prompts[1][: len(alone)] != alone  # the merge is real: the prefix's own tokens are not a prefix
    length = shared_prefix_length(prompts, [1, 1, 1])
    assert length < len(alone) and all(p[:length] == prompts[0][:length] for p in prompts)
    letters = [tokenizer.encode(f" {x}")[0] for x in "AB"]
    stats = {}
    cached = _single_token_logprobs(model, tokenizer, prompts, letters, [2, 2, 2], 2, False, share_prefix=True,
                                    stats=stats)
    plain = _single_token_logprobs(model, tokenizer, prompts, letters, [2, 2, 2], 1, False)
    assert stats["cached_prefix_tokens"] == length
    assert torch.allclose(cached, plain, atol=TOLERANCE)


def test_zero_shot_takes_the_plain_path(qwen):
    model, tokenizer = qwen
    stats = {}
    choice_logprobs(model, tokenizer, PromptTemplate(format="harness").for_task("mmlu_anatomy"), _questions(4), 2,
                    stats=stats)
    assert stats["cached_prefix_tokens"] == 0 and stats["computed_tokens"] == stats["prompt_tokens"]


def test_a_sliding_window_model_is_scored_without_the_cache_and_the_same(qwen3_tokenizer):
    """A sliding-window layer's cache drops old keys: `encode_prefix` refuses it, every prompt runs whole."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(qwen3_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, use_sliding_window=True,
                         sliding_window=8, max_window_layers=1, layer_types=["full_attention", "sliding_attention"],
                         attn_implementation="eager")
    model = Qwen3ForCausalLM(config).eval()
    assert encode_prefix(model, list(range(1, 40))) is None
    template = _templates(qwen3_tokenizer)["harness"]
    stats = {}
    cached = choice_logprobs(model, qwen3_tokenizer, template, _questions(3), 2, stats=stats)
    reference = torch.stack([choice_logprobs(model, qwen3_tokenizer, template, [e], 1)[0] for e in _questions(3)])
    assert stats["cached_prefix_tokens"] == 0
    assert torch.allclose(cached, reference, atol=TOLERANCE)
