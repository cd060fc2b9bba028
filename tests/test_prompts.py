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
    assert template.for_task("medmcqa").prompt(EXAMPLE) == template.prompt(EXAMPLE)
    assert template.choice_texts(EXAMPLE) == [" A", " B", " C"]


def test_harness_format_encodes_with_the_tokenizers_default_special_tokens():
    """HFLM calls tokenizer.encode(text) with the tokenizer's default: a BOS for Llama-like tokenizers."""
    assert PromptTemplate(format="harness").add_special_tokens


MEDQA = MCQExample("m1", "A 23-year-old man has fever. Which drug?", ("Ampicillin", "Ceftriaxone", "Doxycycline",
                                                                         "Vancomycin", "Rifampin"), 2)


def test_harness_prompt_for_medqa_has_no_choices_line_and_five_options_end_at_e():
    template = PromptTemplate(format="harness").for_task("medqa")
    assert template.prompt(MEDQA) == (
        "Question: A 23-year-old man has fever. Which drug?\nA. Ampicillin\nB. Ceftriaxone\nC. Doxycycline\n"
        "D. Vancomycin\nE. Rifampin\nAnswer:"
    )
    assert template.choice_texts(MEDQA) == [" A", " B", " C", " D", " E"]


def test_harness_prompt_for_medqa_4options():
    four = MCQExample("m2", "Which drug?", ("Ampicillin", "Ceftriaxone", "Doxycycline", "Vancomycin"), 0)
    assert PromptTemplate(format="harness").for_task("medqa_4options").prompt(four) == (
        "Question: Which drug?\nA. Ampicillin\nB. Ceftriaxone\nC. Doxycycline\nD. Vancomycin\nAnswer:"
    )


PUBMEDQA = MCQExample("21645374", "Do mitochondria play a role in remodelling lace plant leaves?",
                      ("yes", "no", "maybe"), 0,
                      context="Programmed cell death (PCD) is ...\nThe lace plant produces ...")


def test_harness_prompt_for_pubmedqa_shows_the_abstract_and_scores_the_words():
    template = PromptTemplate(format="harness").for_task("pubmedqa")
    assert template.prompt(PUBMEDQA) == (
        "Abstract: Programmed cell death (PCD) is ...\nThe lace plant produces ...\n"
        "Question: Do mitochondria play a role in remodelling lace plant leaves?\nAnswer:"
    )
    assert template.choice_texts(PUBMEDQA) == [" yes", " no", " maybe"]


MMLU = MCQExample("ck-1", "  What is the normal pH of arterial blood?\n", ("7.0", "7.4", "7.8", "8.0"), 1,
                  subject="clinical_knowledge")


def test_harness_prompt_for_mmlu_starts_with_the_subject_description_and_strips_the_question():
    template = PromptTemplate(format="harness").for_task("mmlu_clinical_knowledge")
    assert template.prompt(MMLU) == (
        "The following are multiple choice questions (with answers) about clinical knowledge.\n\n"
        "What is the normal pH of arterial blood?\nA. 7.0\nB. 7.4\nC. 7.8\nD. 8.0\nAnswer:"
    )
    assert template.choice_texts(MMLU) == [" A", " B", " C", " D"]


def test_harness_fewshot_is_rendered_as_lm_evaluation_harness_renders_it():
    shots = [MCQExample("dev-1", "Q1?", ("a", "b", "c", "d"), 3), MCQExample("dev-2", " Q2? ", ("e", "f", "g", "h"), 0)]
    template = PromptTemplate(format="harness").for_task("mmlu_anatomy").with_fewshot(shots, "dev")
    assert template.prompt(MMLU) == (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "Q1?\nA. a\nB. b\nC. c\nD. d\nAnswer: D\n\n"
        "Q2?\nA. e\nB. f\nC. g\nD. h\nAnswer: A\n\n"
        "What is the normal pH of arterial blood?\nA. 7.0\nB. 7.4\nC. 7.8\nD. 8.0\nAnswer:"
    )
    assert template.fewshot_split == "dev"


def test_harness_pubmedqa_fewshot_answers_with_the_word():
    shot = MCQExample("1", "Is it?", ("yes", "no", "maybe"), 2, context="Ctx.")
    template = PromptTemplate(format="harness").for_task("pubmedqa").with_fewshot([shot], "train")
    assert template.prompt(PUBMEDQA).startswith("Abstract: Ctx.\nQuestion: Is it?\nAnswer: maybe\n\nAbstract: ")


def test_plain_prompt_shows_the_abstract_before_the_question_and_letters_the_words(gpt2_tokenizer):
    template = template_for(gpt2_tokenizer).for_task("pubmedqa")
    assert template.prompt(PUBMEDQA).endswith(
        "explain why.\n\nAbstract: Programmed cell death (PCD) is ...\nThe lace plant produces ...\n"
        "Question: Do mitochondria play a role in remodelling lace plant leaves?\nA. yes\nB. no\nC. maybe\nAnswer:"
    )
    assert template.choice_texts(PUBMEDQA) == [" A", " B", " C"]


def test_plain_fewshot_answers_each_exemplar_with_its_letter(gpt2_tokenizer):
    shot = MCQExample("s", "Q1?", ("a", "b"), 1)
    template = template_for(gpt2_tokenizer).with_fewshot([shot], "train")
    assert template.prompt(EXAMPLE) == (
        "You are a medical expert answering multiple-choice exam questions. Answer with the letter of the correct "
        "option, then explain why.\n\nQuestion: Q1?\nA. a\nB. b\nAnswer: B\n\nQuestion: Which nerve supplies "
        "the deltoid?\nA. Radial\nB. Axillary\nC. Ulnar\nAnswer:"
    )


def test_chat_fewshot_is_one_user_and_assistant_turn_per_exemplar(qwen3_tokenizer):
    shot = MCQExample("s", "Q1?", ("a", "b"), 1)
    template = template_for(qwen3_tokenizer).with_fewshot([shot], "train")
    assert template.prompt(EXAMPLE) == (
        "<|im_start|>system\nYou are a medical expert answering multiple-choice exam questions.<|im_end|>\n"
        "<|im_start|>user\nQuestion: Q1?\nA. a\nB. b\n"
        "Answer with the letter of the correct option, then explain why.<|im_end|>\n"
        "<|im_start|>assistant\nAnswer: B<|im_end|>\n"
        "<|im_start|>user\nQuestion: Which nerve supplies the deltoid?\nA. Radial\nB. Axillary\nC. Ulnar\n"
        "Answer with the letter of the correct option, then explain why.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nAnswer:"
    )


def test_unknown_task_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="unknown task 'medqa_5'.*known tasks: medmcqa"):
        PromptTemplate(format="harness").for_task("medqa_5")


def test_template_with_task_and_fewshot_reloads_identically(tmp_path):
    template = PromptTemplate(format="harness").for_task("pubmedqa").with_fewshot([PUBMEDQA], "train")
    template.save(tmp_path / "prompt.yaml")
    loaded = PromptTemplate.load(tmp_path / "prompt.yaml")
    assert loaded == template and loaded.prompt(PUBMEDQA) == template.prompt(PUBMEDQA)


def test_template_saved_before_tasks_existed_loads_as_medmcqa(tmp_path):
    (tmp_path / "prompt.yaml").write_text("format: harness\nsystem: s\ninstruction: i\nanswer_prefix: 'Answer:'\n"
                                          "letter_prefix: ' '\nenable_thinking: false\nchat_template: null\n"
                                          "special_tokens: {}\nversion: 1\n", encoding="utf-8")
    loaded = PromptTemplate.load(tmp_path / "prompt.yaml")
    assert loaded.task is None and loaded.fewshot == () and "\nChoices:\n" in loaded.prompt(EXAMPLE)


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
