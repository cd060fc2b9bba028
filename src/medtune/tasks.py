"""The benchmarks medtune knows by name: where each is read from and how the field scores it.

A task names a source family (its `layout`: which reader parses its rows), the Hub dataset the Open Medical-LLM
Leaderboard runs through lm-evaluation-harness (0-shot, `acc`), the split that is scored and the split few-shot
exemplars come from. Local files in each family's official layout are read by the same readers (`medtune.data`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    layout: str  # the reader: "medmcqa", "medqa", "pubmedqa" or "mmlu"
    hub_id: str | None  # None: no Hub copy in this layout; a local file is needed
    hub_config: str | None  # the Hub dataset's config name, when it has several
    split: str  # the split that is scored (the harness's test split)
    fewshot_split: str | None  # where few-shot exemplars come from: never the scored split
    n_options: int
    subject: str | None = None  # MMLU: the subject the file and the harness's description name

    @property
    def subject_words(self) -> str | None:
        """'clinical_knowledge' -> 'clinical knowledge', as in the harness's MMLU description."""
        return self.subject.replace("_", " ") if self.subject else None


MMLU_MEDICAL = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                "professional_medicine")

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("medmcqa", "medmcqa", "openlifescienceai/medmcqa", None, "validation", "train", 4),
        Task("medqa_4options", "medqa", "GBaker/MedQA-USMLE-4-options-hf", None, "test", "train", 4),
        Task("medqa", "medqa", None, None, "test", "train", 5),  # the 5-option release: local files only
        Task("pubmedqa", "pubmedqa", "bigbio/pubmed_qa", "pubmed_qa_labeled_fold0_source", "test", "train", 3),
        *(Task(f"mmlu_{subject}", "mmlu", "cais/mmlu", subject, "test", "dev", 4, subject)
          for subject in MMLU_MEDICAL),
    )
}

# The "MultiMedQA" multiple-choice set, as the Open Medical-LLM Leaderboard runs it.
SUITES: dict[str, tuple[str, ...]] = {
    "medical": ("medmcqa", "medqa_4options", "pubmedqa", *(f"mmlu_{subject}" for subject in MMLU_MEDICAL)),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
