"""Explanations: a check for one that states another option as the answer (a table of literal cases), the cut at
a sentence end or a visible marker when the token cap stops one, and generation settings that stop loops --
shown on the real SmolLM2, which loops on a MedMCQA question without them (slow), and on the tiny model."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from conftest import MEDMCQA
from medtune.answer import (
    CUT_MARKER,
    NO_REPEAT_NGRAM_SIZE,
    Answerer,
    cut_at_sentence,
    explanation_consistent,
    explanation_settings,
)
from medtune.data import example_from_input

NERVES = ["Radial nerve", "Ulnar nerve", "Median nerve", "Axillary nerve"]
LETTERS = "ABCD"
CHOSEN = 2  # C) Median nerve is the scored answer in every case below

CONTRADICTING = [
    "The answer is D.",
    "Answer: D",
    "answer: (d)",
    "The correct answer is (D) because the nerve winds around the humerus.",
    "Option D is correct.",
    "THE CORRECT ANSWER IS D",
    "D is the correct answer.",
    "(D) is the right answer here.",
    "So the answer would be A.",
    "The correct answer is D) Axillary nerve.",
    "The correct option is B.",
    "The answer to this question is B.",
    "The median nerve supplies the flexors. The answer is D",
    "The correct answer is C. On reflection, the answer is D.",  # any claim for another letter is flagged
    "The answer is axillary nerve.",
    "The correct answer is the Ulnar  nerve, which supplies the hand.",
    "Axillary nerve is the correct answer.",
    "In wrist drop, Radial nerve is the right answer.",
    "Answer D. The radial nerve is injured.",
]

CONSISTENT = [
    "The answer is C.",
    "Answer: C",
    "The correct answer is C) Median nerve.",
    "The answer is median nerve, not ulnar nerve.",
    "A is wrong because the ulnar nerve causes claw hand.",
    "Unlike D, the median nerve supplies the thenar muscles.",
    "Option D is incorrect.",
    "Option D is wrong: the axillary nerve supplies the deltoid.",
    "The correct answer is not D.",
    "D is not the correct answer.",
    "Answer D is wrong, because the axillary nerve supplies the deltoid.",
    "The answer is a matter of anatomy: the median nerve.",
    "The answer E is not among the options.",  # four options: E names none of them
    "Carpal tunnel syndrome compresses the median nerve.",
    "Radial nerve injury causes wrist drop, but the question asks about the thenar eminence.",
    "Axillary nerve is not the correct answer.",
    "",
]


@pytest.mark.parametrize("text", CONTRADICTING)
def test_an_explanation_stating_another_option_as_the_answer_is_flagged(text):
    assert explanation_consistent(text, CHOSEN, NERVES, LETTERS) is False


@pytest.mark.parametrize("text", CONSISTENT)
def test_an_explanation_that_mentions_other_options_in_passing_is_not_flagged(text):
    assert explanation_consistent(text, CHOSEN, NERVES, LETTERS) is True


@pytest.mark.parametrize("chosen,text,consistent", [
    (1, "The answer is Vitamin B12.", True),  # "Vitamin B" is a prefix of the chosen option: the longer match wins
    (0, "The answer is vitamin B12.", False),
    (0, "The answer is Vitamin B, not B12.", True),
    (1, "Vitamin B is the correct answer.", False),
    (1, "Vitamin B12 is the correct answer.", True),
])
def test_an_option_that_is_a_prefix_of_another_is_told_apart(chosen, text, consistent):
    assert explanation_consistent(text, chosen, ["Vitamin B", "Vitamin B12", "Vitamin C"], "ABC") is consistent


# ------------------------------------------------------------------ the cut at a sentence end

@pytest.mark.parametrize("text,expected", [
    # cut back to the last full sentence when that keeps at least half of the text
    ("The radial nerve winds around the humerus. A fracture there injures it. It also supp",
     "The radial nerve winds around the humerus. A fracture there injures it."),
    ("Is it the radial nerve? Yes, it winds around the humerus! The shaft frac",
     "Is it the radial nerve? Yes, it winds around the humerus!"),
    ("The nerve is injured (as in a fracture.) Then the wrist dr",
     "The nerve is injured (as in a fracture.)"),
    ("It ends exactly at a sentence.", "It ends exactly at a sentence."),
    # the only sentence end keeps less than half: keep it all, marked as cut
    ("Yes. The radial nerve winds around the humerus and a fracture of its shaft injures it, which",
     "Yes. The radial nerve winds around the humerus and a fracture of its shaft injures it, which" + CUT_MARKER),
    ("The radial nerve winds around the humerus and a fracture of its shaft",
     "The radial nerve winds around the humerus and a fracture of its shaft" + CUT_MARKER),
    # a single letter, an abbreviation or a decimal point does not end a sentence
    ("The options were C. Median nerve and D. Axillary nerve, of which", None),
    ("Some drugs, e.g. tropicamide at 0.5% and atropine at 1% in children and adults alike, are", None),
    ("As Dr. Smith showed in his long study of forearm and wrist injuries, the radial ", None),
])
def test_a_capped_explanation_ends_at_a_sentence_or_is_marked_as_cut(text, expected):
    assert cut_at_sentence(text) == (expected if expected is not None else text.rstrip() + CUT_MARKER)


# ------------------------------------------------------------------ loops

def max_ngram_repeats(tokens: list[int], size: int = NO_REPEAT_NGRAM_SIZE) -> int:
    counts = Counter(tuple(tokens[i:i + size]) for i in range(len(tokens) - size + 1))
    return max(counts.values(), default=0)


def generated_tokens(answerer: Answerer, example, index: int, max_new_tokens: int, settings: bool) -> list[int]:
    """The explanation's token ids, through `Answerer.explain` (settings=True) or a plain greedy generate."""
    seen = []
    real = answerer.model.generate

    def recording(**options):
        output = real(**options)
        seen.append(output[0, options["input_ids"].shape[1]:].tolist())
        return output

    if settings:
        answerer.model.generate = recording
        try:
            answerer.explain(example, index, max_new_tokens)
        finally:
            del answerer.model.generate
        return seen[0]
    context = answerer.template.explanation_context(example, index)
    ids = answerer.tokenizer(context, add_special_tokens=answerer.template.add_special_tokens, return_tensors="pt")
    return real(**ids, max_new_tokens=max_new_tokens, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def tiny_answerer(tiny_qwen3) -> Answerer:
    return Answerer.from_model(str(tiny_qwen3), device="cpu", dtype="fp32")


def test_the_tiny_model_repeats_itself_without_the_settings_and_not_with_them(tiny_answerer):
    example = example_from_input("Which nerve is injured in wrist drop?", NERVES)
    plain = generated_tokens(tiny_answerer, example, 0, 40, settings=False)
    assert max_ngram_repeats(plain) >= 2, "the random model did not loop: pick another question"
    assert max_ngram_repeats(generated_tokens(tiny_answerer, example, 0, 40, settings=True)) == 1


def test_the_settings_exempt_the_prompt_so_an_explanation_may_quote_an_option():
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])  # a 6-gram 5..10 in the prompt
    processor = explanation_settings(prompt.shape[1])["logits_processor"][0]
    continuing = torch.cat([prompt, torch.tensor([[5, 6, 7, 8, 9]])], dim=1)
    scores = processor(continuing, torch.zeros(1, 20))
    assert torch.isfinite(scores).all()  # repeating the prompt's 6-gram is allowed
    repeated = torch.cat([prompt, torch.tensor([[1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5]])], dim=1)
    assert processor(repeated, torch.zeros(1, 20))[0, 6] == -float("inf")  # its own 6-gram is not


@pytest.mark.slow
def test_smollm2_loops_on_a_medmcqa_question_without_the_settings_and_not_with_them(smollm2):
    """Base SmolLM2-135M-Instruct repeats "Category B is a classification system ..." 7 times in 160 greedy
    tokens on this validation question (measured); 80 tokens are enough to see it."""
    row = json.loads((MEDMCQA / "validation.jsonl").read_text().splitlines()[6])
    example = example_from_input(row["question"], [choice[3:] for choice in row["choices"]])
    answerer = Answerer.from_model(str(smollm2), device="cpu", dtype="fp32")
    plain = answerer.tokenizer.decode(generated_tokens(answerer, example, 2, 80, settings=False))
    sentences = Counter(s.strip() for s in plain.split(".") if len(s.split()) >= 5)
    assert max(sentences.values()) >= 3, plain
    explained = generated_tokens(answerer, example, 2, 80, settings=True)
    assert max_ngram_repeats(explained) == 1
    text = answerer.explain(example, 2, 80)
    assert max(Counter(s.strip() for s in text.split(".") if len(s.split()) >= 5).values()) == 1, text
    assert text.endswith((".", "!", "?", CUT_MARKER)), text
