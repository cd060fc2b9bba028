"""The one prompt template: example -> (prompt, target). Saved in every run directory.

The prompt ends right before the answer, so the answer is the first supervised token in training and the
position scored in evaluation:

    chat:    <chat template: system, user(question + options + instruction), assistant turn opened>Answer:
    plain:   <instruction>\\n\\nQuestion: ...\\nA. ...\\nAnswer:
    harness: each benchmark's lm-evaluation-harness 0.4.13 text (`task`; None is MedMCQA's), for comparison:
             medmcqa        Question: ...\\nChoices:\\nA. ...\\nAnswer:
             medqa*         Question: ...\\nA. ...\\nAnswer:
             pubmedqa       Abstract: <contexts>\\nQuestion: ...\\nAnswer:          (choices " yes", " no", " maybe")
             mmlu_*         <description><question stripped>\\nA. ...\\nAnswer:
                            (description: "The following are multiple choice questions ... about X.\\n\\n")

    target:  " B) <option text>\\nExplanation: <explanation>"     (the explanation only when the row has one)

In chat and plain, a question asked about passages (`MCQExample.context`, PubMedQA's abstract) shows them first
("Abstract: ...\\nQuestion: ..."), and the options are always lettered. Letters are scored with a leading space
(" A"), a single token in the tokenizers we support; that is checked at start-up (`tokenization.letter_token_ids`).

Few-shot exemplars (`with_fewshot`) come before the question. harness: as lm-evaluation-harness renders them
(description, then each exemplar's text + its gold continuation, joined and followed by "\\n\\n"). plain: the
same shape after the instruction, each exemplar answered "Answer: B". chat: one user turn per exemplar and an
assistant turn "Answer: B" after it, then the question's turn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from medtune.data import MCQExample
from medtune.tasks import get_task

FORMATS = ("chat", "plain", "harness")
SYSTEM = "You are a medical expert answering multiple-choice exam questions."
INSTRUCTION = "Answer with the letter of the correct option, then explain why."
TEMPLATE_VERSION = 1  # `task` and the few-shot fields have defaults: templates saved before them load unchanged
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"


@dataclass(frozen=True)
class PromptTemplate:
    """Everything that decides the text a model sees; a run saves it so eval and serving cannot drift."""

    format: str = "chat"
    system: str = SYSTEM
    instruction: str = INSTRUCTION
    answer_prefix: str = "Answer:"
    letter_prefix: str = " "  # " A", not "A": the token that follows "Answer:" in natural text
    enable_thinking: bool = False  # Qwen3 is hybrid-thinking; pinned off so the letter comes first
    chat_template: str | None = None  # the tokenizer's Jinja template, copied at training time
    special_tokens: dict = field(default_factory=dict)  # bos_token/eos_token text some templates print
    version: int = TEMPLATE_VERSION
    task: str | None = None  # the benchmark (tasks.TASKS) whose harness text is used; None: MedMCQA's
    fewshot: tuple[MCQExample, ...] = ()  # labelled exemplars shown before every question
    fewshot_split: str | None = None  # the split they came from (recorded in metrics.json)

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"prompt format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.format == "chat" and not self.chat_template:
            raise ValueError("the chat prompt format needs the tokenizer's chat template")
        if self.task is not None:
            get_task(self.task)  # an unknown task name fails here, with the known names
        # a template read back from prompt.yaml holds its exemplars as dicts (options as lists)
        exemplars = tuple(e if isinstance(e, MCQExample) else MCQExample(**{**e, "options": tuple(e["options"])})
                          for e in self.fewshot)
        object.__setattr__(self, "fewshot", exemplars)
        if any(e.answer is None for e in exemplars):
            raise ValueError("a few-shot exemplar has no answer; exemplars must be labelled rows")

    @property
    def add_special_tokens(self) -> bool:
        """Plain prompts get the tokenizer's BOS; chat templates write their own special tokens. The harness
        format does what lm-evaluation-harness's HFLM does by default: `tokenizer.encode(text)` with the
        tokenizer's own default, which adds a BOS where the tokenizer has that habit (Llama, Gemma) and nothing
        for SmolLM2, Qwen3 or GPT-2."""
        return self.format in ("plain", "harness")

    @property
    def layout(self) -> str:
        """The source family whose harness text applies: medmcqa, medqa, pubmedqa or mmlu."""
        return get_task(self.task).layout if self.task else "medmcqa"

    # ------------------------------------------------------------ text

    def question_block(self, example: MCQExample) -> str:
        """chat/plain: the passages (if any), the question and the lettered options."""
        lines = [f"Abstract: {example.context}"] if example.context else []
        lines.append(f"Question: {example.question}")
        lines += [f"{letter}. {option}" for letter, option in zip(example.letters, example.options)]
        return "\n".join(lines)

    def harness_text(self, example: MCQExample) -> str:
        """lm-evaluation-harness 0.4.13's doc_to_text for this task, ending in 'Answer:' (read off
        lm_eval/tasks/{medmcqa,medqa,pubmedqa,mmlu})."""
        if self.layout == "pubmedqa":  # preprocess_pubmedqa.doc_to_text: CONTEXTS joined by "\n"
            return f"Abstract: {example.context or ''}\nQuestion: {example.question}\n{self.answer_prefix}"
        options = "".join(f"{letter}. {option}\n" for letter, option in zip(example.letters, example.options))
        if self.layout == "mmlu":  # _default_template_yaml: "{{question.strip()}}\nA. ..."
            return f"{example.question.strip()}\n{options}{self.answer_prefix}"
        if self.layout == "medqa":  # preprocess_medqa.doc_to_text: no "Choices:" line
            return f"Question: {example.question}\n{options}{self.answer_prefix}"
        return f"Question: {example.question}\nChoices:\n{options}{self.answer_prefix}"  # utils_medmcqa

    def description(self) -> str:
        """The harness's task description printed once before everything (MMLU's names the subject)."""
        if self.format == "harness" and self.layout == "mmlu":
            return MMLU_DESCRIPTION.format(subject=get_task(self.task).subject_words)
        return ""

    def prompt(self, example: MCQExample) -> str:
        """The text up to and including the answer prefix, e.g. '...Answer:'."""
        if self.format == "harness":
            shots = "".join(f"{self.harness_text(e)}{self.gold_text(e)}\n\n" for e in self.fewshot)
            return f"{self.description()}{shots}{self.harness_text(example)}"
        if self.format == "plain":
            shots = "".join(f"{self.question_block(e)}\n{self.answer_prefix}{self.gold_text(e)}\n\n"
                            for e in self.fewshot)
            return (f"{self.system} {self.instruction}\n\n{shots}{self.question_block(example)}\n"
                    f"{self.answer_prefix}")
        return self._render_chat(example) + self.answer_prefix

    def _render_chat(self, example: MCQExample) -> str:
        # transformers' own renderer: the same sandboxed Jinja environment as `apply_chat_template`.
        from transformers.utils.chat_template_utils import render_jinja_template

        messages = [{"role": "system", "content": self.system}]
        for shot in self.fewshot:
            messages += [{"role": "user", "content": f"{self.question_block(shot)}\n{self.instruction}"},
                         {"role": "assistant", "content": f"{self.answer_prefix}{self.gold_text(shot)}"}]
        messages.append({"role": "user", "content": f"{self.question_block(example)}\n{self.instruction}"})
        rendered, _ = render_jinja_template(
            [messages], chat_template=self.chat_template, add_generation_prompt=True,
            enable_thinking=self.enable_thinking, **self.special_tokens,
        )
        return rendered[0]

    def choice_texts(self, example: MCQExample) -> list[str]:
        """The continuations scored after the prompt, one per option: ' A'..' E', or for harness PubMedQA the
        option words themselves (' yes', ' no', ' maybe': the harness's target_delimiter ' ' + doc_to_choice)."""
        if self.format == "harness" and self.layout == "pubmedqa":
            return [f" {option}" for option in example.options]
        return [self.letter_text(letter) for letter in example.letters]

    def gold_text(self, example: MCQExample) -> str:
        """The continuation of the correct option (a few-shot exemplar's answer)."""
        return self.choice_texts(example)[example.answer]

    def letter_text(self, letter: str) -> str:
        return f"{self.letter_prefix}{letter}"

    def answer_line(self, example: MCQExample, index: int) -> str:
        """' B) <option text>' -- what follows the prompt for the option at `index`."""
        return f"{self.letter_text(example.letters[index])}) {example.options[index]}"

    def target(self, example: MCQExample) -> str:
        """The supervised text: the gold letter and option text, then the explanation when there is one."""
        if example.answer is None:
            raise ValueError(f"example {example.id!r} has no answer to train on")
        text = self.answer_line(example, example.answer)
        return f"{text}\nExplanation: {example.explanation}" if example.explanation else text

    def explanation_context(self, example: MCQExample, index: int) -> str:
        """The prompt, the chosen answer, and 'Explanation:' -- generation continues from here."""
        return f"{self.prompt(example)}{self.answer_line(example, index)}\nExplanation:"

    # ------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        values = asdict(self)
        values["fewshot"] = [{**asdict(e), "options": list(e.options)} for e in self.fewshot]  # YAML has no tuples
        Path(path).write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> PromptTemplate:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if values.get("version") != TEMPLATE_VERSION:
            raise ValueError(f"{path}: prompt template version {values.get('version')} is not {TEMPLATE_VERSION}")
        return cls(**values)

    def with_format(self, format_name: str) -> PromptTemplate:
        return replace(self, format=format_name)

    def for_task(self, name: str | None) -> PromptTemplate:
        """The same template for benchmark `name`: its harness text in the harness format (chat and plain read
        the same for every task)."""
        return replace(self, task=name)

    def with_fewshot(self, exemplars: list[MCQExample], split: str | None = None) -> PromptTemplate:
        """The same template with `exemplars` (labelled, from `split`) shown before every question."""
        return replace(self, fewshot=tuple(exemplars), fewshot_split=split if exemplars else None)


def template_for(tokenizer, format_name: str = "auto") -> PromptTemplate:
    """The template for a tokenizer: its chat template when it has one (format 'auto'), else plain text."""
    chat_template = getattr(tokenizer, "chat_template", None)
    if isinstance(chat_template, dict):  # some tokenizers keep several named templates
        chat_template = chat_template.get("default")
    if format_name == "auto":
        format_name = "chat" if chat_template else "plain"
    if format_name == "chat" and not chat_template:
        raise ValueError("--prompt-format chat was asked for, but this tokenizer has no chat template")
    if format_name != "chat":
        return PromptTemplate(format=format_name)
    special = {name: getattr(tokenizer, name) for name in ("bos_token", "eos_token") if getattr(tokenizer, name, None)}
    return PromptTemplate(format=format_name, chat_template=chat_template, special_tokens=special)
