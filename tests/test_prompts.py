import pytest

from medtune.data import MCQExample
from medtune.prompts import PromptTemplate, template_for

EXAMPLE = MCQExample("x", "Which nerve supplies the deltoid?", ("Radial", "Axillary", "Ulnar"), 1,
                     "The axillary nerve (C5-C6) supplies deltoid.")


def test_qwen3_chat_prompt_pins_thinking_off_and_ends_at_answer_prefix(qwen3_tokenizer):
    template = template_for(qwen3_tokenizer)
    assert template.format == "chat" and template.enable_thinking is False
    assert template.prompt(EXAMPLE) == (
        "<|im_start|>system\nYou are a medical expert answering multiple-choice exam questions.<|im_end|>\n"
        "<|im_start|>user\nQuestion: Which nerve supplies the deltoid?\nA. Radial\nB. Axillary\nC. Ulnar\n"
        "Answer with the letter of the correct option, then explain why.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nAnswer:"
    )


def test_plain_prompt_is_used_when_the_tokenizer_has_no_chat_template(gpt2_tokenizer):
    template = template_for(gpt2_tokenizer)
    assert template.format == "plain" and template.add_special_tokens
    assert template.prompt(EXAMPLE) == (
        "You are a medical expert answering multiple-choice exam questions. Answer with the letter of the correct "
        "option, then explain why.\n\nQuestion: Which nerve supplies the deltoid?\nA. Radial\nB. Axillary\n"
        "C. Ulnar\nAnswer:"
    )


def test_harness_prompt_matches_lm_evaluation_harness_medmcqa():
    template = PromptTemplate(format="harness")
    assert template.prompt(EXAMPLE) == (
        "Question: Which nerve supplies the deltoid?\nChoices:\nA. Radial\nB. Axillary\nC. Ulnar\nAnswer:"
    )
    assert not template.add_special_tokens


def test_target_is_letter_option_then_explanation():
    template = PromptTemplate(format="harness")
    assert template.target(EXAMPLE) == " B) Axillary\nExplanation: The axillary nerve (C5-C6) supplies deltoid."
    no_explanation = MCQExample("y", "Q?", ("a", "b"), 0)
    assert template.target(no_explanation) == " A) a"


def test_explanation_context_continues_after_the_chosen_answer():
    template = PromptTemplate(format="harness")
    assert template.explanation_context(EXAMPLE, 2).endswith("Answer: C) Ulnar\nExplanation:")


def test_saved_template_reloads_identically(tmp_path, qwen3_tokenizer):
    template = template_for(qwen3_tokenizer)
    template.save(tmp_path / "prompt.yaml")
    loaded = PromptTemplate.load(tmp_path / "prompt.yaml")
    assert loaded == template and loaded.prompt(EXAMPLE) == template.prompt(EXAMPLE)


def test_chat_format_without_a_chat_template_is_refused(gpt2_tokenizer):
    with pytest.raises(ValueError, match="no chat template"):
        template_for(gpt2_tokenizer, "chat")
