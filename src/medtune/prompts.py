"""The one prompt template: example -> (prompt, target). Saved in every run directory.

The prompt ends right before the answer letter, so the letter is the first supervised token in
training and the position scored in evaluation:

    chat:    <chat template: system, user(question + options + instruction), assistant turn opened>Answer:
    plain:   <instruction>\\n\\nQuestion: ...\\nA. ...\\nAnswer:
    harness: Question: ...\\nChoices:\\nA. ...\\nAnswer:          (lm-evaluation-harness MedMCQA, for comparison)

    target:  " B) <option text>\\nExplanation: <explanation>"     (the explanation only when the row has one)

Letters are scored with a leading space (" A"), a single token in the tokenizers we support; that is checked
at start-up (`tokenization.letter_token_ids`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from medtune.data import MCQExample

FORMATS = ("chat", "plain", "harness")
SYSTEM = "You are a medical expert answering multiple-choice exam questions."
INSTRUCTION = "Answer with the letter of the correct option, then explain why."
TEMPLATE_VERSION = 1


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

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"prompt format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.format == "chat" and not self.chat_template:
            raise ValueError("the chat prompt format needs the tokenizer's chat template")

    @property
    def add_special_tokens(self) -> bool:
        """Plain prompts get the tokenizer's BOS; chat templates write their own special tokens;
        the harness format adds none (lm-evaluation-harness's default for causal LMs)."""
        return self.format == "plain"

    def question_block(self, example: MCQExample) -> str:
        lines = [f"Question: {example.question}"]
        if self.format == "harness":
            lines.append("Choices:")
        lines += [f"{letter}. {option}" for letter, option in zip(example.letters, example.options)]
        return "\n".join(lines)

    def prompt(self, example: MCQExample) -> str:
        """The text up to and including the answer prefix, e.g. '...Answer:'."""
        if self.format == "harness":
            return f"{self.question_block(example)}\n{self.answer_prefix}"
        if self.format == "plain":
            return f"{self.system} {self.instruction}\n\n{self.question_block(example)}\n{self.answer_prefix}"
        return self._render_chat(example) + self.answer_prefix

    def _render_chat(self, example: MCQExample) -> str:
        # transformers' own renderer: the same sandboxed Jinja environment as `apply_chat_template`.
        from transformers.utils.chat_template_utils import render_jinja_template

        messages = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": f"{self.question_block(example)}\n{self.instruction}"},
        ]
        rendered, _ = render_jinja_template(
            [messages], chat_template=self.chat_template, add_generation_prompt=True,
            enable_thinking=self.enable_thinking, **self.special_tokens,
        )
        return rendered[0]

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
        Path(path).write_text(yaml.safe_dump(asdict(self), sort_keys=False, allow_unicode=True), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> PromptTemplate:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if values.get("version") != TEMPLATE_VERSION:
            raise ValueError(f"{path}: prompt template version {values.get('version')} is not {TEMPLATE_VERSION}")
        return cls(**values)

    def with_format(self, format_name: str) -> PromptTemplate:
        return replace(self, format=format_name)


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
