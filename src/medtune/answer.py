"""Answerer: the answer letter, every option's probability, and an explanation.

The letter and probabilities come from `evaluate.choice_logprobs`, the function evaluation scores with;
the explanation is generated afterwards, continuing from the chosen answer, so free text can never change
the graded answer. The CLI uses it now; a server can hold one and call `answer_many`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from medtune.data import LETTERS, MCQExample, example_from_input
from medtune.device import select_attention, select_device, select_dtype, select_quantization
from medtune.evaluate import choice_logprobs, model_device
from medtune.modeling import check_adapter_file, load_adapter, load_base, upcast_unquantized
from medtune.prompts import PromptTemplate, template_for
from medtune.rundir import RunDir
from medtune.tokenization import pad_token_id


@dataclass(frozen=True)
class Answer:
    answer: str | None  # the chosen letter; None when the top options tie exactly (as `medtune eval` counts it)
    probs: dict[str, float]  # letter -> probability, summing to 1 over the options
    explanation: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def chosen_letter(probs: dict[str, float]) -> str | None:
    """The most probable letter, or None where two or more tie exactly for the top: `medtune eval`'s rule
    (`evaluate.predicted_options`), on the probabilities the user sees. fp32 log-probabilities that tie give
    equal probabilities and distinct ones distinct probabilities, so the two always agree."""
    top = max(probs.values())
    letters = [letter for letter, p in probs.items() if p == top]
    return letters[0] if len(letters) == 1 else None


class Answerer:
    """A loaded model (with its adapter) and the prompt template it was trained with."""

    def __init__(self, model, tokenizer, template: PromptTemplate, description: dict):
        self.model, self.tokenizer, self.template, self.description = model, tokenizer, template, description

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", dtype: str = "auto",
                 prompt_format: str | None = None, attention: str = "auto",
                 trust_remote_code: bool = False, quantize: str | None = None) -> Answerer:
        """The run's base model + adapter + saved prompt; refuses a base that differs from the trained one.

        `prompt_format` None or "auto" is the run's saved prompt; "harness" swaps in lm-evaluation-harness's
        prompt (recorded in the description); any other format is refused (`_run_prompt`). `quantize` None
        loads the base the way it was trained (a QLoRA run: 4-bit); none/4bit/8bit asks for that load instead --
        the base fingerprint names the checkpoint, not its load, so each of them accepts the adapter."""
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(f"run folder {run_dir} does not exist; give the --output folder of a "
                                    "`medtune train` run")
        run = RunDir(run_dir).require_run()
        manifest = run.read_manifest()
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
        description = {"base_model": base["id"], "adapter": str(run.adapter), "dtype": chosen_dtype,
                       "dtype_reason": dtype_reason, "device": chosen_device, "prompt_format": template.format,
                       "prompt": prompt, "quantization": quantization, "trained_quantization": trained}
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
        """Option probabilities per example, exactly as `medtune eval` computes them."""
        logprobs = choice_logprobs(self.model, self.tokenizer, self.template, examples)
        return [{letter: math.exp(logprobs[i, j].item()) for j, letter in enumerate(example.letters)}
                for i, example in enumerate(examples)]

    def answer_many(self, items: list[tuple[str, list[str]]], explain: bool = False,
                    max_new_tokens: int = 160) -> list[Answer]:
        """Score all questions in one batched pass; explanations (if asked) are generated one by one, and
        only for a chosen letter (a tie has none to explain)."""
        examples = [example_from_input(q, o, where=f"question {i + 1}") for i, (q, o) in enumerate(items)]
        answers = []
        for example, probs in zip(examples, self.score(examples)):
            letter = chosen_letter(probs)
            text = self.explain(example, LETTERS.index(letter), max_new_tokens) if explain and letter else None
            answers.append(Answer(letter, probs, text))
        return answers

    def answer(self, question: str, options: list[str], explain: bool = True, max_new_tokens: int = 160) -> Answer:
        return self.answer_many([(question, options)], explain, max_new_tokens)[0]

    @torch.no_grad()
    def explain(self, example: MCQExample, index: int, max_new_tokens: int = 160, **generate_options) -> str:
        """Greedy explanation continuing from '... Answer: B) <option>\\nExplanation:'.

        `generate_options` go to `model.generate` (a server passes a streamer and a stopping criterion)."""
        context = self.template.explanation_context(example, index)
        ids = self.tokenizer(context, add_special_tokens=self.template.add_special_tokens, return_tensors="pt")
        ids = ids.to(model_device(self.model))
        output = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=pad_token_id(self.tokenizer), **generate_options)
        return self.tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


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
