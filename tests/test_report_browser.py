"""The report in a real browser: headless Chromium (Debian's `chromium` package, driven by Playwright) opens the
HTML file from disk. It must load with no console error, request nothing but the file itself, and show every
figure. Saves tests/artifacts/report-page.png.

MEDTUNE_REPORT_PAGE=path/to/report.html checks that report instead (docs/report.sh does, for the README's
screenshot) and also saves the screenshot to docs/report.png."""

import json
import os
import shutil
from pathlib import Path

import pytest

from medtune.evaluation.compare import compare
from medtune.report import write_report
from test_report import make_evaluation, make_suite

ARTIFACTS = Path(__file__).parent / "artifacts"
DOCS = Path(__file__).parents[1] / "docs"


@pytest.fixture(scope="module")
def report(request, tmp_path_factory) -> Path:
    given = os.environ.get("MEDTUNE_REPORT_PAGE")
    if given:
        return Path(given).resolve()
    folder = tmp_path_factory.mktemp("report-inputs")
    run = Path(shutil.copytree(request.getfixturevalue("tiny_run"), folder / "run"))
    make_evaluation(run / "eval" / "base", seed=1, skill=0.2)
    make_evaluation(run / "eval" / "tuned", seed=2, skill=0.5)
    (run / "eval" / "comparison.json").write_text(json.dumps(compare(run / "eval" / "base", run / "eval" / "tuned",
                                                                     warn=lambda _: None)))
    old = make_evaluation(folder / "old-eval", seed=3, skill=0.3, extras=False)  # its "not measured" lines
    suite = make_suite(folder / "suite", seed=10, skill=0.4)
    return write_report([run, old, suite], folder / "out" / "report.html")


def test_report_loads_offline_with_every_figure(browser, report):
    context = browser.new_context(viewport={"width": 960, "height": 1200})
    page = context.new_page()
    errors, requests = [], []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri(), wait_until="load")

    assert errors == []  # a resource the content security policy refused would be logged here
    assert [url for url in requests if not url.startswith("data:")] == [report.as_uri()]
    figures = page.locator("figure[data-figure]")
    assert figures.count() == len(list(report.parent.glob(f"{report.stem}-*.png"))) > 0
    sizes = page.eval_on_selector_all("figure[data-figure] img", "images => images.map(i => [i.complete, "
                                                                  "i.naturalWidth, i.alt])")
    assert len(sizes) == figures.count()
    assert all(complete and width > 0 and alt for complete, width, alt in sizes), sizes
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # nothing runs off the side
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "report-page.png", full_page=True)
    if os.environ.get("MEDTUNE_REPORT_PAGE"):
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=DOCS / "report.png", full_page=True)
    context.close()
