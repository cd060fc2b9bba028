from dataclasses import replace

import pytest
import torch

from medtune.data import MCQExample
from medtune.prompts import PromptTemplate, template_for
from medtune.tokenization import (
    IGNORE,
    Encoded,
    PromptError,
    collate,
    collate_prompts,
    encode_example,
    encode_prompt,
    letter_token_ids,
)

EXAMPLE = MCQExample("x", "Which nerve supplies the deltoid?", ("Radial", "Axillary", "Ulnar", "Median"), 1,
                     "The axillary nerve supplies deltoid and teres minor.")


def test_letters_are_single_tokens_in_context(qwen3_tokenizer):
    template = template_for(qwen3_tokenizer)
    ids = letter_token_ids(qwen3_tokenizer, template, 5, sample=EXAMPLE)
    assert ids == [qwen3_tokenizer.convert_tokens_to_ids(f"Ġ{letter}") for letter in "ABCDE"]


def test_multi_token_letter_fails_with_a_sentence(gpt2_tokenizer):
    template = replace(template_for(gpt2_tokenizer), letter_prefix="  ")  # "  A" is two GPT-2 tokens
    with pytest.raises(PromptError, match="is 2 tokens with this tokenizer"):
        letter_token_ids(gpt2_tokenizer, template)


def test_first_supervised_label_is_the_answer_letter(qwen3_tokenizer):
    template = template_for(qwen3_tokenizer)
    letters = letter_token_ids(qwen3_tokenizer, template)
    encoded = encode_example(qwen3_tokenizer, template, EXAMPLE, letters, max_len=512)
    prompt_length = len(encode_prompt(qwen3_tokenizer, template, EXAMPLE))
    assert encoded.labels[:prompt_length] == [IGNORE] * prompt_length
    assert encoded.labels[prompt_length] == letters[1] == encoded.input_ids[prompt_length]
    assert encoded.labels[-1] == qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert qwen3_tokenizer.decode(encoded.input_ids[prompt_length:]) == (
        " B) Axillary\nExplanation: The axillary nerve supplies deltoid and teres minor.<|im_end|>"
    )


def test_truncation_cuts_the_explanation_never_the_letter(qwen3_tokenizer):
    template = template_for(qwen3_tokenizer)
    letters = letter_token_ids(qwen3_tokenizer, template)
    prompt_length = len(encode_prompt(qwen3_tokenizer, template, EXAMPLE))
    encoded = encode_example(qwen3_tokenizer, template, EXAMPLE, letters, max_len=prompt_length + 3)
    assert len(encoded.input_ids) == prompt_length + 3
    assert qwen3_tokenizer.decode(encoded.input_ids[prompt_length:]) == " B) Ax"


def test_prompt_longer_than_the_limit_is_an_error(qwen3_tokenizer):
    template = template_for(qwen3_tokenizer)
    letters = letter_token_ids(qwen3_tokenizer, template)
    with pytest.raises(PromptError, match="too long for max_seq_len=20"):
        encode_example(qwen3_tokenizer, template, EXAMPLE, letters, max_len=20)


def test_harness_prompt_adds_no_special_tokens(qwen3_tokenizer):
    template = PromptTemplate(format="harness")
    assert encode_prompt(qwen3_tokenizer, template, EXAMPLE)[:2] == qwen3_tokenizer.encode("Question:")


def test_collate_right_pads_with_ignored_labels():
    batch = collate([Encoded([5, 6, 7], [IGNORE, 6, 7]), Encoded([8, 9], [IGNORE, 9])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, 9, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_collate_prompts_left_pads_and_counts_positions_over_real_tokens():
    batch = collate_prompts([[5, 6, 7], [8, 9]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert torch.equal(batch["position_ids"], torch.tensor([[0, 1, 2], [0, 0, 1]]))


# ---------------------------------------------------------------- a context (PubMedQA's abstract) gives way first

PUBMEDQA = MCQExample("12345", "Does the drug lower blood pressure?", ("yes", "no", "maybe"), 0,
                      "It lowers systolic pressure by 10 mmHg.",
                      context="\n".join(" ".join(f"{part} word{k}" for k in range(60)) for part in ("Background",
                                                                                                    "Results")))


def test_a_long_context_is_cut_from_its_end_so_the_whole_target_fits(qwen3_tokenizer):
    template = template_for(qwen3_tokenizer)
    letters = letter_token_ids(qwen3_tokenizer, template, 3)
    full = encode_example(qwen3_tokenizer, template, PUBMEDQA, letters, max_len=1024)
    encoded = encode_example(qwen3_tokenizer, template, PUBMEDQA, letters, max_len=200)
    assert full.context_cut == 0 and len(full.input_ids) > 200
    assert len(encoded.input_ids) <= 200 and encoded.context_cut > 0
    supervised = [token for token in encoded.labels if token != IGNORE]
    assert qwen3_tokenizer.decode(supervised) == (
        " A) yes\nExplanation: It lowers systolic pressure by 10 mmHg.<|im_end|>")
    text = qwen3_tokenizer.decode(encoded.input_ids)
    assert "Abstract: Background word0 Background word1" in text and "Results word59" not in text
    assert "Question: Does the drug lower blood pressure?\nA. yes\nB. no\nC. maybe" in text


def test_a_context_too_long_to_keep_any_of_leaves_the_question_and_answer(qwen3_tokenizer):
    template = template_for(qwen3_tokenizer)
    letters = letter_token_ids(qwen3_tokenizer, template, 3)
    bare = replace(PUBMEDQA, context=None)
    limit = len(encode_example(qwen3_tokenizer, template, bare, letters, max_len=1024).input_ids)
    encoded = encode_example(qwen3_tokenizer, template, PUBMEDQA, letters, max_len=limit)
    assert encoded.input_ids == encode_example(qwen3_tokenizer, template, bare, letters, max_len=limit).input_ids
    assert encoded.context_cut == len(qwen3_tokenizer.encode(PUBMEDQA.context, add_special_tokens=False))


def test_a_row_without_context_that_cannot_fit_is_still_too_long(qwen3_tokenizer):
    template = template_for(qwen3_tokenizer)
    letters = letter_token_ids(qwen3_tokenizer, template, 3)
    with pytest.raises(PromptError, match="too long for max_seq_len=20") as error:
        encode_example(qwen3_tokenizer, template, replace(PUBMEDQA, context=None), letters, max_len=20)
    assert error.value.reason == "too_long"
