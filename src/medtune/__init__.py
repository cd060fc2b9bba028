"""medtune: fine-tune, evaluate and serve small language models on medical multiple-choice questions."""

__version__ = "0.1.0"

from medtune.answer import Answer, Answerer  # noqa: E402
from medtune.config import TrainConfig, load_config  # noqa: E402
from medtune.data import MCQExample, load_examples  # noqa: E402
from medtune.evaluate import choice_logprobs, evaluate  # noqa: E402
from medtune.prompts import PromptTemplate  # noqa: E402
from medtune.train import train  # noqa: E402

__all__ = [
    "Answer", "Answerer", "MCQExample", "PromptTemplate", "TrainConfig",
    "choice_logprobs", "evaluate", "load_config", "load_examples", "train", "__version__",
]
