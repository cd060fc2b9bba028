"""`medtune report`: runs, evaluations, suites and comparisons as one self-contained HTML page.

    write_report(paths, output)   read each PATH by its shape (sources.py), build one section per input
                                  (sections.py), draw the figures (figures.py, training.py, calibration.py,
                                  comparisons.py), write the page (page.py) and each figure as a PNG beside it
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from medtune.report.page import Block, Placed, document, esc, figure
from medtune.report.sources import Comparison, Evaluation, Run, Suite, read_sources

__all__ = ["write_report"]


def write_report(paths: list[str | Path], output: Path) -> Path:
    """Write the report of `paths` (run, evaluation or suite folders; comparison JSON files) to `output` (HTML)
    and its figures to `<output stem>-<figure id>.png` beside it; return the HTML path."""
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--output {output} does not end in .html; name the report file, e.g. report.html")
    sources = read_sources(paths)
    sections = [(f"s{index + 1}", source) for index, source in enumerate(sources)]
    blocks = [block for sid, source in sections for block in section(source, sid)]
    output.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(_place(block, output) for block in blocks)
    contents = [(sid, f"{kind(source)}: {source.name}") for sid, source in sections]
    output.write_text(document("medtune report", _intro(paths), contents, body), encoding="utf-8")
    return output


def section(source, sid: str) -> list[Block]:
    from medtune.report import sections

    if isinstance(source, Run):
        return sections.run_section(source, sid)
    if isinstance(source, Suite):
        return sections.suite_section(source, sid)
    if isinstance(source, Comparison):
        return sections.comparison_section(source, sid)
    return sections.evaluation_section(source, sid)


def kind(source) -> str:
    return {Run: "run", Suite: "suite", Comparison: "comparison", Evaluation: "evaluation"}[type(source)]


def _place(block: Block, output: Path) -> str:
    """HTML as it is; a figure inline, and its PNG written beside the page."""
    if not isinstance(block, Placed):
        return block
    name = f"{output.stem}-{block.id}.png"
    (output.parent / name).write_bytes(block.plot.png)
    return figure(block, name)


def _intro(paths: list) -> str:
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    listed = " ".join(esc(path) for path in paths)
    return (f'<p class="muted">Made {esc(made)} by <code>medtune report {listed}</code>. Every accuracy is given '
            "with its number of questions (n) and, where one applies, its 95% interval.</p>")
