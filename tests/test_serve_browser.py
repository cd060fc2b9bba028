"""End to end in a real browser: headless Chromium (Debian's `chromium` package, driven by Playwright) uses the
page served by a real `medtune serve` process on loopback. Saves tests/artifacts/serve-page.png."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from medtune.answer import Answerer

ARTIFACTS = Path(__file__).parent / "artifacts"
SERVE = [sys.executable, "-m", "medtune.cli", "serve"]
MAX_NEW_TOKENS = 12
FIRST_EXAMPLE = ("Which nerve is injured in wrist drop?",  # the page's first example button
                 ["Radial nerve", "Ulnar nerve", "Median nerve", "Axillary nerve"])


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """`medtune serve RUN_DIR` on a free loopback port; yields its base URL once /healthz says ok."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w+")
    process = subprocess.Popen([*SERVE, str(run_dir), "--port", str(port), "--dtype", "fp32", "--device", "cpu",
                                "--max-new-tokens", str(MAX_NEW_TOKENS)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _wait_healthy(url: str, process: subprocess.Popen, log, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"medtune serve exited with {process.returncode}:\n{log.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"medtune serve was not healthy within {seconds:.0f} s")


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 900, "height": 1100})
    page = context.new_page()
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server)
    yield page
    context.close()
    # e.g. a script the content security policy blocked; Chromium also logs each 4xx response, and the
    # bad-input test earns one 422 on purpose
    assert [error for error in errors if "status of 422" not in error] == []


def test_page_answers_with_bars_and_explanation(page, run_dir):
    expected = Answerer.from_run(run_dir, device="cpu", dtype="fp32").answer(
        *FIRST_EXAMPLE, explain=True, max_new_tokens=MAX_NEW_TOKENS)
    assert expected.explanation, "the tiny model explained nothing: pick another question"
    assert page.get_by_text("Research tool — not for clinical decisions").is_visible()

    page.click("[data-example='0']")
    assert page.input_value("#question") == FIRST_EXAMPLE[0]
    page.fill("#question", FIRST_EXAMPLE[0])  # typed, as a person would, over the example's text
    page.click("#submit")
    page.wait_for_selector("#result[data-state='done']", timeout=60_000)

    assert page.text_content("#answer-letter") == expected.answer
    bars = page.locator(".bar")
    assert bars.count() == 4
    for i, (letter, prob) in enumerate(expected.probs.items()):
        assert bars.nth(i).get_attribute("data-letter") == letter
        assert bars.nth(i).locator(".pct").text_content() == f"{100 * prob:.1f}%"
        width = bars.nth(i).locator(".fill").evaluate("e => e.style.width")
        assert width == f"{100 * prob:.1f}%"
    assert page.locator(".bar.chosen").get_attribute("data-letter") == expected.answer
    assert page.text_content("#explanation") == expected.explanation
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "serve-page.png", full_page=True)


def test_options_can_be_added_up_to_five_and_removed_down_to_two(page):
    assert page.locator("#options input").count() == 4
    page.click("#add-option")
    assert page.locator("#options input").count() == 5 and page.is_disabled("#add-option")
    for _ in range(3):
        page.locator("#options .option button").first.click()
    assert page.locator("#options input").count() == 2
    assert page.locator("#options .option button").first.is_disabled()


def test_bad_input_shows_the_servers_message(page):
    page.fill("#question", "Which is right?")
    for i, text in enumerate(["same", "same", "other", "more"]):
        page.locator("#options input").nth(i).fill(text)
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert "contains the same option twice" in page.text_content("#error")


def test_page_says_plainly_when_the_model_abstains(page, run_dir):
    expected = Answerer.from_run(run_dir, device="cpu", dtype="fp32").answer(*FIRST_EXAMPLE, explain=False)
    assert expected.confidence < 0.99, "the tiny model is 99% sure: pick another question"
    page.click("[data-example='0']")
    page.uncheck("#explain")
    page.fill("#abstain-below", "0.99")
    page.click("#submit")
    page.wait_for_selector("#result[data-state='done']", timeout=60_000)
    confidence = f"{100 * expected.confidence:.1f}%"
    assert page.text_content("#confidence") == f"Confidence: {confidence} (not calibrated)"
    assert page.is_visible("#abstain")
    assert page.text_content("#abstain") == (f"The model abstains: its confidence {confidence} is below the "
                                             "threshold 99.0%. Its best guess is shown below; do not rely on it.")
    assert page.text_content("#answer-letter") == expected.answer  # the best guess is still shown
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "serve-page-abstain.png", full_page=True)

    page.fill("#abstain-below", "0")  # 0 never abstains
    page.click("#submit")
    page.wait_for_selector("#result[data-state='done']", timeout=60_000)
    page.wait_for_function("!document.querySelector('#submit').disabled")
    assert not page.is_visible("#abstain") and page.text_content("#confidence").startswith("Confidence: ")


def test_page_shows_a_note_when_the_explanation_contradicts_the_answer(page):
    """The server's stream is replaced by one whose explanation names another letter (the tiny model's random
    text seldom does): the page keeps the scored letter and says the explanation contradicts it."""
    events = [("answer", {"answer": "A", "probs": {"A": 0.7, "B": 0.3}, "confidence": 0.7, "abstain": False,
                          "abstain_below": None, "calibrated": True, "model": {"base_model": "tiny"}}),
              ("token", {"text": "The answer is B."}),
              ("done", {"explanation": "The answer is B.", "explanation_consistent": False})]
    body = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
    page.route("**/v1/answer/stream", lambda route: route.fulfill(status=200, body=body,
                                                                   content_type="text/event-stream"))
    page.fill("#question", "Which is right?")
    for i, text in enumerate(["yes", "no"]):
        page.locator("#options input").nth(i).fill(text)
    page.click("#submit")
    page.wait_for_selector("#result[data-state='done']")
    assert page.text_content("#answer-letter") == "A" and page.text_content("#explanation") == "The answer is B."
    assert page.is_visible("#inconsistent")
    assert "states a different answer than the scored one. The model's answer is A" in \
        page.text_content("#inconsistent")
    assert page.text_content("#confidence") == "Confidence: 70.0% (calibrated)" and not page.is_visible("#abstain")
