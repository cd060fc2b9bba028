"""Answerer: the answer letter, every option's probability, and an explanation.

The letter and probabilities come from `evaluate.choice_logprobs`, the function evaluation scores with;
the explanation is generated afterwards, continuing from the chosen answer, so free text can never change
the graded answer. The CLI uses it now; a server can hold one and call `answer_many`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor

from medtune.data import LETTERS, MCQExample, example_from_input
from medtune.device import select_attention, select_device, select_dtype, select_quantization
from medtune.evaluate import choice_logprobs, model_device
from medtune.evaluation.calibration import CALIBRATION_FILE, read_temperature, scale_logprobs
from medtune.modeling import check_adapter_file, fold_adapter, load_adapter, load_base, upcast_unquantized
from medtune.prompts import PromptTemplate, template_for
from medtune.rundir import RunDir
from medtune.tokenization import pad_token_id


@dataclass(frozen=True)
class Answer:
    answer: str | None  # the chosen letter; None when the top options tie exactly (as `medtune eval` counts it)
    probs: dict[str, float]  # letter -> probability, summing to 1 over the options (calibrated when `calibrated`)
    explanation: str | None  # ends at a sentence, or with CUT_MARKER where the token cap cut it mid-sentence
    confidence: float  # the top probability of `probs`
    # True when confidence < the threshold asked for (abstain_below), and always for a tie (no letter chosen).
    # The letter and the probabilities are kept: abstaining says "do not rely on this", it hides nothing.
    abstain: bool
    # False: the explanation states another option (letter or text) as the answer; None: no explanation.
    # The scored letter stays the answer either way.
    explanation_consistent: bool | None
    calibrated: bool  # probs were temperature-scaled (the run has calibration.json)

    def to_dict(self) -> dict:
        return asdict(self)


def check_threshold(abstain_below: float | None, name: str = "abstain_below") -> float | None:
    """None (never abstain) or a probability; anything else is refused with a sentence."""
    if abstain_below is None:
        return None
    if isinstance(abstain_below, bool) or not isinstance(abstain_below, int | float) \
            or not 0 <= abstain_below <= 1:
        raise ValueError(f"{name} is {abstain_below!r}; it must be a probability from 0 to 1 (e.g. 0.6: abstain "
                         "when the top option's probability is below 60%)")
    return float(abstain_below)


def abstains(letter: str | None, confidence: float, abstain_below: float | None) -> bool:
    """A tie always abstains (the model chose no letter); otherwise only a confidence below the threshold."""
    return letter is None or (abstain_below is not None and confidence < abstain_below)


def scored_answer(probs: dict[str, float], abstain_below: float | None = None, calibrated: bool = False) -> Answer:
    """The Answer for scored probabilities, before any explanation: what ask, the API and the server share."""
    letter, confidence = chosen_letter(probs), max(probs.values())
    return Answer(letter, probs, None, confidence, abstains(letter, confidence, abstain_below), None, calibrated)


def with_explanation(answer: Answer, example: MCQExample, explanation: str | None) -> Answer:
    """`answer` with its explanation, checked against the scored letter (`explanation_consistent`)."""
    if explanation is None:
        return replace(answer, explanation=None, explanation_consistent=None)
    consistent = explanation_consistent(explanation, example.letters.index(answer.answer), example.options,
                                        example.letters)
    return replace(answer, explanation=explanation, explanation_consistent=consistent)


# ------------------------------------------------------------------ explanations
# How every explanation is generated -- `ask`, the Python API and the server alike (the server passes a
# streamer and a stopping criterion on top). Greedy, so the same question gets the same text. Measured on
# base SmolLM2-135M-Instruct, 12 MedMCQA validation questions, 160 tokens: without the n-gram rule 2 of 12
# explanations repeated a whole sentence (one 7 times) and 6 of 12 repeated a 6-word span; with it, none
# (README, "Explanations"). A repetition penalty was tried and not kept: transformers applies it to the prompt
# too, which steers the text away from the question's own words (it changed most explanations' subject).
NO_REPEAT_NGRAM_SIZE = 6  # no 6-token sequence occurs twice within an explanation; the prompt is exempt
CUT_MARKER = " […]"  # ends an explanation the token cap cut mid-sentence


class _NoRepeatAfterPrompt(NoRepeatNGramLogitsProcessor):
    """transformers' `no_repeat_ngram_size` over the generated tokens only. The stock one also bans n-grams of
    the prompt, so an explanation could not quote the option it explains (measured: 'Antegrade and retrograde'
    came out as 'Antegebra')."""

    def __init__(self, ngram_size: int, prompt_length: int):
        super().__init__(ngram_size)
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        return super().__call__(input_ids[:, self.prompt_length:], scores)


def explanation_settings(prompt_length: int) -> dict:
    """`model.generate` options for an explanation whose prompt is `prompt_length` tokens long."""
    return {"do_sample": False,
            "logits_processor": LogitsProcessorList([_NoRepeatAfterPrompt(NO_REPEAT_NGRAM_SIZE, prompt_length)])}


_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")
_ABBREVIATION = re.compile(r"(?:^|[\s(])(?:[A-Za-z]|e\.g|i\.e|vs|cf|approx|Dr|Mr|Mrs|Ms|St|Fig|No)\.$", re.IGNORECASE)


def cut_at_sentence(text: str) -> str:
    """An explanation the token cap stopped: cut back to its last sentence end when that keeps at least half of
    the text, else keep it all and append CUT_MARKER, so a reader sees it was cut. A single letter or a common
    abbreviation before a full stop ('C.', 'e.g.', 'Dr.') does not end a sentence; '0.04' has no space after."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)
            if not (text[m.start()] == "." and _ABBREVIATION.search(text[:m.start() + 1]))]
    if ends and ends[-1] >= len(text) / 2:
        return text[:ends[-1]]
    return text.rstrip() + CUT_MARKER


# A claim that a letter is the answer: "the answer is D", "Answer: (D)", "correct option is option D", "the
# answer to this question is D" -- or "D is correct", "option D is the right answer", "(D) is the best choice".
_LETTER = r"(?P<open>[(\[])?(?P<letter>[A-Za-z])(?:(?P<close>[)\]])|(?![\w'’]))"
_ANSWER_WORDS = (r"(?i:\b(?:(?:correct|right|best|final|true)\s+(?:answer|option|choice)|answer)"
                 r"(?:\s+to\s+(?:the|this)\s+question)?)")
_VERB = r"(?i:\s*(?:is|was|would\s+be|will\s+be|should\s+be|must\s+be)?\s*[:=\-–]?\s*)"
_ANSWER_IS_LETTER = re.compile(_ANSWER_WORDS + _VERB + r"(?i:(?:option|choice)\s+)?" + _LETTER)
_LETTER_IS_CORRECT = re.compile(r"(?:^|[.!?:;,\n(]\s*|(?i:\b(?:option|choice|answer)\s+))" + _LETTER
                                + r"\s*(?i:is|was)\s+(?i:the\s+)?(?i:correct|right|best|true)\b")
_DENIED = re.compile(r"\s*(?i:is|was|are)?\s*(?i:not|wrong|incorrect|false)\b")  # "answer D is wrong"
_ANSWER_IS = re.compile(_ANSWER_WORDS + _VERB + r"(?i:(?:the|an|a)\s+)?[\"'“‘]?")


def explanation_consistent(explanation: str, chosen_index: int, options, letters) -> bool:
    """False when `explanation` states another option as the answer: its letter ("the answer is D", "Answer:
    D", "correct answer is (D)", "option D is correct", case-insensitive words, a capital letter or a bracketed
    small one) or its text ("the answer is <option text>", "<option text> is the correct answer"). Other
    options mentioned in passing ("A is wrong because...", "unlike D", "the answer is not D") are no claim."""
    chosen = letters[chosen_index]
    for claim in (*_ANSWER_IS_LETTER.finditer(explanation), *_LETTER_IS_CORRECT.finditer(explanation)):
        letter = claim["letter"]
        if letter.islower() and not (claim["open"] or claim["close"]):
            continue  # "the answer is a ..." is an article, not option a
        if letter.upper() in letters and letter.upper() != chosen and not _DENIED.match(explanation, claim.end()):
            return False
    stated = [_stated_option(explanation, claim.end(), options) for claim in _ANSWER_IS.finditer(explanation)]
    if any(index is not None and index != chosen_index for index in stated):
        return False
    return not any(index != chosen_index and _named_correct(explanation, text) for index, text in enumerate(options))


def _stated_option(explanation: str, start: int, options) -> int | None:
    """The option whose text `explanation` continues with at `start` (the longest such; case and spacing
    ignored, whole words), or None."""
    following = " ".join(explanation[start:start + 2000].split()).lower()
    found = [(len(text), i) for i, text in enumerate(options)
             if re.match(re.escape(" ".join(text.split()).lower()) + r"(?!\w)", following)]
    return max(found)[1] if found else None


def _named_correct(explanation: str, option_text: str) -> bool:
    words = r"\s+".join(re.escape(word) for word in option_text.split())
    claim = rf"(?<!\w){words}\s+(?:is|was)\s+(?:the\s+)?(?:correct|right|best)\s+(?:answer|option|choice)\b"
    return re.search(claim, explanation, re.IGNORECASE) is not None


def chosen_letter(probs: dict[str, float]) -> str | None:
    """The most probable letter, or None where two or more tie exactly for the top: `medtune eval`'s rule
    (`evaluate.predicted_options`), on the probabilities the user sees. fp32 log-probabilities that tie give
    equal probabilities and distinct ones distinct probabilities, so the two always agree."""
    top = max(probs.values())
    letters = [letter for letter, p in probs.items() if p == top]
    return letters[0] if len(letters) == 1 else None


class Answerer:
    """A loaded model (with its adapter) and the prompt template it was trained with."""

    def __init__(self, model, tokenizer, template: PromptTemplate, description: dict,
                 temperature: float | None = None):
        self.model, self.tokenizer, self.template, self.description = model, tokenizer, template, description
        # T of the run's calibration.json: `score` divides the option log-probabilities by it (None: raw). A copy
        # made from a description (e.g. the suite's per-task Answerer) keeps the T the description records.
        self.temperature = temperature if temperature is not None else description.get("temperature")

    @property
    def calibrated(self) -> bool:
        """Whether `score` returns temperature-scaled probabilities."""
        return self.temperature is not None

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", dtype: str = "auto",
                 prompt_format: str | None = None, attention: str = "auto",
                 trust_remote_code: bool = False, quantize: str | None = None,
                 use_calibration: bool = True, fold: bool = True) -> Answerer:
        """The run's base model + adapter + saved prompt; refuses a base that differs from the trained one.
        The run's calibration.json, when it has one, sets `temperature` (`use_calibration=False`: raw
        probabilities, as `medtune calibrate` needs to fit T).

        `prompt_format` None or "auto" is the run's saved prompt; "harness" swaps in lm-evaluation-harness's
        prompt (recorded in the description); any other format is refused (`_run_prompt`). `quantize` None
        loads the base the way it was trained (a QLoRA run: 4-bit); none/4bit/8bit asks for that load instead --
        the base fingerprint names the checkpoint, not its load, so each of them accepts the adapter.

        `fold` (default) folds the adapter into the base weights for base-speed inference where that is exact
        (`modeling.fold_adapter`: not on a 4/8-bit base); `fold=False` keeps the PeftModel, for a caller that
        disables the adapter (the comparison after training) or merges it itself (export)."""
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(f"run folder {run_dir} does not exist; give the --output folder of a "
                                    "`medtune train` run")
        run = RunDir(run_dir).require_run()
        manifest = run.read_manifest()
        calibration = read_temperature(run.root) if use_calibration else None  # a broken file fails before loading
        base = manifest["base_model"]
        template, prompt = _run_prompt(PromptTemplate.load(run.prompt), prompt_format)
        chosen_device = select_device(device).value
        chosen_dtype, dtype_reason = _inference_dtype(dtype, chosen_device)
        check_adapter_file(run.adapter)  # before loading the base: a missing adapter fails in a moment
        trained = base.get("quantization") or manifest.get("quantization") or "none"
        quantization = select_quantization(quantize or trained, chosen_device).value
        model, tokenizer, info = load_base(base["id"], chosen_dtype, base.get("revision"),
                                           trust_remote_code=trust_remote_code, quantize=quantization,
                                           device=chosen_device,
                                           attention=select_attention(attention, chosen_device, chosen_dtype).value)
        if quantization != "none" and quantization == trained:
            upcast_unquantized(model)  # as QLoRA training had them (prepare_model_for_kbit_training)
        model = load_adapter(model, run.adapter, base["fingerprint"])
        model = model if quantization != "none" else model.to(chosen_device)  # bitsandbytes placed it already
        model, folded = fold_adapter(model) if fold else (model, "kept unmerged: asked (fold=False)")
        description = {"base_model": base["id"], "adapter": str(run.adapter), "dtype": chosen_dtype,
                       "dtype_reason": dtype_reason, "device": chosen_device, "prompt_format": template.format,
                       "prompt": prompt, "quantization": quantization, "trained_quantization": trained,
                       "adapter_folded": folded}
        if calibration:  # results say which probabilities they hold
            description.update(temperature=calibration["temperature"], calibration=str(run.root / CALIBRATION_FILE))
        return cls(model, tokenizer, template, description)

    @classmethod
    def from_model(cls, source: str, device: str = "auto", dtype: str = "auto", prompt_format: str = "auto",
                   trust_remote_code: bool = False, attention: str = "auto", quantize: str = "none") -> Answerer:
        """A base model with no adapter; the prompt follows its chat template (or plain text). `quantize`
        4bit/8bit loads it through bitsandbytes (where device.select_quantization says it works)."""
        chosen_device = select_device(device).value
        chosen_dtype, dtype_reason = _inference_dtype(dtype, chosen_device)
        quantization = select_quantization(quantize or "none", chosen_device).value
        model, tokenizer, info = load_base(source, chosen_dtype, trust_remote_code=trust_remote_code,
                                           quantize=quantization, device=chosen_device,
                                           attention=select_attention(attention, chosen_device, chosen_dtype).value)
        template = template_for(tokenizer, prompt_format)
        description = {"base_model": source, "adapter": None, "dtype": chosen_dtype, "dtype_reason": dtype_reason,
                       "device": chosen_device, "prompt_format": template.format, "quantization": quantization}
        return cls(model if quantization != "none" else model.to(chosen_device), tokenizer, template, description)

    def score(self, examples: list[MCQExample]) -> list[dict[str, float]]:
        """Option probabilities per example, exactly as `medtune eval` computes them; calibrated (divided by
        `temperature` before the softmax, in float64 so distinct options stay distinct) when the run has a T.
        The most probable option is the same either way."""
        logprobs = choice_logprobs(self.model, self.tokenizer, self.template, examples)
        if self.temperature is not None:
            logprobs = scale_logprobs(logprobs.double(), self.temperature)
        return [{letter: math.exp(logprobs[i, j].item()) for j, letter in enumerate(example.letters)}
                for i, example in enumerate(examples)]

    def answer_many(self, items: list[tuple[str, list[str]]], explain: bool = False,
                    max_new_tokens: int = 160, abstain_below: float | None = None) -> list[Answer]:
        """Score all questions in one batched pass; explanations (if asked) are generated one by one, and
        only for a chosen letter (a tie has none to explain). `abstain_below` (a probability, or None: never)
        sets `abstain` where the top probability is below it; an abstaining answer keeps its letter,
        probabilities and explanation."""
        abstain_below = check_threshold(abstain_below)
        examples = [example_from_input(q, o, where=f"question {i + 1}") for i, (q, o) in enumerate(items)]
        calibrated = getattr(self, "temperature", None) is not None
        answers = []
        for example, probs in zip(examples, self.score(examples)):
            answer = scored_answer(probs, abstain_below, calibrated)
            if explain and answer.answer:
                text = self.explain(example, LETTERS.index(answer.answer), max_new_tokens)
                answer = with_explanation(answer, example, text)
            answers.append(answer)
        return answers

    def answer(self, question: str, options: list[str], explain: bool = True, max_new_tokens: int = 160,
               abstain_below: float | None = None) -> Answer:
        return self.answer_many([(question, options)], explain, max_new_tokens, abstain_below)[0]

    @torch.no_grad()
    def explain(self, example: MCQExample, index: int, max_new_tokens: int = 160, **generate_options) -> str:
        """Greedy explanation continuing from '... Answer: B) <option>\\nExplanation:', generated with
        `explanation_settings` (no repeated 6-token sequence); one the token cap stopped is cut back to a
        sentence end or marked as cut (`cut_at_sentence`).

        `generate_options` go to `model.generate` (a server passes a streamer and a stopping criterion)."""
        context = self.template.explanation_context(example, index)
        ids = self.tokenizer(context, add_special_tokens=self.template.add_special_tokens, return_tensors="pt")
        ids = ids.to(model_device(self.model))
        prompt_length = ids["input_ids"].shape[1]
        output = self.model.generate(**ids, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id(self.tokenizer),
                                     **{**explanation_settings(prompt_length), **generate_options})
        generated = output[0, prompt_length:]
        text = self.tokenizer.decode(generated, skip_special_tokens=True).strip()
        capped = len(generated) >= max_new_tokens and generated[-1].item() not in _end_ids(self.model, self.tokenizer)
        return cut_at_sentence(text) if capped and text else text


def _end_ids(model, tokenizer) -> set[int]:
    """The token ids that end a generation (the model's generation config may name several)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return {i for i in [*ids, tokenizer.eos_token_id] if i is not None}


def add_model_arguments(parser) -> None:
    """The flags that choose what answers: a run directory or a base model, and where and how it runs.
    Shared by `medtune eval`, `ask` and `serve`."""
    parser.add_argument("run_dir", nargs="?", help="a finished training run (adapter + prompt + manifest)")
    parser.add_argument("--model", help="a base model instead of a run: Hub id, local folder or .gguf file")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    parser.add_argument("--dtype", default="auto",
                        help="auto | bf16 | fp16 | fp32 (default auto: fp32 on the CPU, bf16 (else fp16) on GPUs; "
                             "the letter scores are computed in fp32 in every dtype)")
    parser.add_argument("--attention", default="auto",
                        help="auto | eager | sdpa | flash_attention_2 (default auto: eager on the CPU, sdpa on GPUs)")
    parser.add_argument("--prompt-format", choices=["auto", "chat", "plain", "harness"], default=None,
                        help="with --model: the prompt style (default auto: the chat template if the model has one); "
                             "with a run: auto (the run's saved prompt, the default) or 'harness' "
                             "(lm-evaluation-harness's prompt for the task instead, recorded in the results)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow code from the model repository to run (only for repositories you trust)")
    parser.add_argument("--quantize", choices=["none", "4bit", "8bit"], default=None,
                        help="load the base through bitsandbytes (default: a run's base as it was trained, 4-bit for "
                             "a QLoRA run; a --model unquantized); 'none' puts a QLoRA adapter on a 16-bit base")


def answerer_from_args(args) -> Answerer:
    """The Answerer for `args.run_dir` or `args.model` (exactly one), as `add_model_arguments` parsed them."""
    if bool(args.run_dir) == bool(args.model):
        raise ValueError("give either a RUN_DIR or --model MODEL (exactly one)")
    if args.run_dir:
        return Answerer.from_run(args.run_dir, args.device, args.dtype, args.prompt_format, args.attention,
                                 args.trust_remote_code, getattr(args, "quantize", None))
    return Answerer.from_model(args.model, args.device, args.dtype, args.prompt_format or "auto",
                               args.trust_remote_code, args.attention, getattr(args, "quantize", None) or "none")


def _inference_dtype(requested: str, device: str) -> tuple[str, str]:
    """(dtype, reason) for eval, ask, serve and the quickstart alike. The rule for 'auto': fp32 on the CPU,
    else the device's training choice (bf16 where supported, else fp16, on GPUs; fp32 on MPS).

    Why: on the CPU, memory is rarely what limits inference of a small model, and fp32 gives the same
    probabilities whatever batch a question shares; on a GPU, 16-bit weights halve memory and run several
    times faster. The answer letters' logits are computed in fp32 in every dtype (`evaluate.letter_logits`)."""
    if requested == "auto" and device == "cpu":
        return "fp32", "auto: fp32 on the CPU, where 16-bit saves little at inference and fp32 is batch-exact"
    choice = select_dtype(requested, device)
    return choice.value, choice.reason


def _run_prompt(template: PromptTemplate, prompt_format: str | None) -> tuple[PromptTemplate, str]:
    """The run's saved prompt, or lm-evaluation-harness's with `harness`; (template, what it is)."""
    saved = f"the run's saved prompt ({template.format})"
    if prompt_format in (None, "auto", template.format):
        return template, saved
    if prompt_format == "harness":
        return template.with_format("harness"), f"harness: lm-evaluation-harness's prompt instead of {saved}"
    raise ValueError(f"--prompt-format {prompt_format} differs from {saved}: a run is scored with the prompt it "
                     "was trained with; leave --prompt-format out, or use 'harness' to compare with "
                     "lm-evaluation-harness")
