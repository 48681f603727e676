"""The annotation page in a real browser: Playwright drives headless Chromium (Debian's
``chromium`` package; `.ci/run` installs it, Playwright never downloads one). One test labels
pairs with the keyboard after logging in through a token link; the other feeds hostile
responses and checks that nothing executes and the page stays usable."""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from activepref.annotate.queue import AnnotationQueue
from activepref.config import load_config
from tests.annotate.human_runs import add_link, free_port, serve, start_awaiting

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("ACTIVEPREF_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def human_run(tmp_path):
    config = load_config(overrides={"pool": "builtin", "method": "dts", "batch_size": 6, "iterations": 1, "seed": 0,
                                    "judge": {"kind": "human"}})
    start_awaiting(config, tmp_path / "run")
    return tmp_path / "run"


def watch(page):
    """Record dialogs, console errors and uncaught page errors."""
    seen = {"dialogs": [], "console": [], "errors": []}
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.on("console", lambda m: seen["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    return seen


def stored_labels(run_dir):
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        return conn.execute("SELECT task_id, annotator, choice, swapped FROM annotation_labels ORDER BY created").fetchall()
    finally:
        conn.close()


def test_label_with_the_keyboard_after_a_token_link(browser, human_run):
    port = free_port()
    link = add_link(human_run, "alice", port)
    app = serve(human_run, port)
    try:
        stranger = browser.new_page()
        assert stranger.goto(app.url + "/").status == 401  # no token, no page
        assert stranger.goto(app.url + "/?token=guess").status == 403
        stranger.close()
        page = browser.new_page()
        seen = watch(page)
        page.goto(link)
        assert "token" not in page.url  # moved to a cookie
        shown = []
        for key, choice in (("1", "a"), ("2", "b"), ("3", "tie"), ("s", "skip")):
            task = page.locator('input[name="task_id"]').get_attribute("value")
            page.locator("#response-a").wait_for()
            with page.expect_navigation():
                page.keyboard.press(key)
            shown.append((int(task), choice))
        page.locator("textarea[name=note]").fill("typing 1 2 3 here does not submit")  # keys in the note are text
        page.locator("textarea[name=note]").press("1")
        assert page.locator("textarea[name=note]").input_value().endswith("1")
        with page.expect_navigation():
            page.get_by_role("button", name="B is better").click()  # plain form, no key
        assert "last=saved" in page.url
        labels = stored_labels(human_run)
        assert len(labels) == 5 and all(who == "alice" for _, who, _, _ in labels)
        for (task_id, choice), (stored_id, _, stored, swapped) in zip(shown[:4], labels[:4]):
            assert task_id == stored_id
            want = {"a": "second" if swapped else "first", "b": "first" if swapped else "second"}.get(choice, choice)
            assert stored == want  # what the key meant, in the stored pair's terms
        notes = sqlite3.connect(human_run / "run.sqlite").execute("SELECT note FROM annotation_labels WHERE note IS NOT NULL").fetchall()
        assert notes == [("typing 1 2 3 here does not submit1",)]
        assert page.locator("#my-labels").inner_text() == "4"  # the skip is not a label
        assert seen == {"dialogs": [], "console": [], "errors": []}
    finally:
        app.stop()


HOSTILE = [
    "<script>window.__pwned = 'script'; alert('script')</script>",
    "<img src=x onerror=\"window.__pwned='img'; alert('img')\">",
    "[click me](javascript:alert('link'))",
    "<a href=\"javascript:alert('a')\">a</a> <iframe src=\"javascript:alert('frame')\"></iframe>",
    "```html\n<script>alert('code')</script>\n```\n- item <b onmouseover=alert('b')>x</b>",
]


def test_hostile_responses_render_as_text_and_the_page_stays_usable(browser, human_run):
    port = free_port()
    link = add_link(human_run, "mallory", port)
    queue = AnnotationQueue.open(human_run)
    try:
        first, second, prompt = queue.conn.execute(
            "SELECT t.first_idx, t.second_idx, r.prompt_idx FROM annotation_tasks t JOIN responses r ON r.idx = t.first_idx "
            "ORDER BY t.task_id LIMIT 1").fetchone()
        hostile = "\n\n".join(HOSTILE)
        huge = ("A long answer line with `code` and *emphasis*. " * 40 + "\n\n") * 110  # about 200 KB
        assert len(huge) > 200_000
        with queue.conn:
            queue.conn.execute("UPDATE responses SET text = ? WHERE idx = ?", (hostile, first))
            queue.conn.execute("UPDATE responses SET text = ? WHERE idx = ?", (huge, second))
            queue.conn.execute("UPDATE prompts SET text = ?, messages = NULL WHERE idx = ?", ("<script>alert('prompt')</script> Which?", prompt))
    finally:
        queue.close()
    app = serve(human_run, port)
    try:
        page = browser.new_page()
        seen = watch(page)
        page.goto(link)
        assert page.locator('input[name="task_id"]').get_attribute("value") == "1"
        page.wait_for_timeout(300)
        assert page.evaluate("window.__pwned") is None
        body = page.locator("main").inner_text()
        assert "<script>window.__pwned = 'script'" in body and "onerror=" in body and "javascript:alert('link')" in body
        assert "<script>alert('prompt')</script>" in body
        for selector in ("main img", "main iframe", "main script", "main a[href]", "main [onerror]", "main [onmouseover]"):
            assert page.locator(selector).count() == 0, selector
        buttons = page.locator(".decide")
        assert buttons.is_visible() and buttons.bounding_box()["y"] < 200  # the answer buttons stay reachable above 200 KB
        page.mouse.wheel(0, 20000)
        assert page.get_by_role("button", name="Tie").is_visible()  # sticky while scrolling
        with page.expect_navigation():
            page.keyboard.press("3")
        assert "last=saved" in page.url
        assert [(t, c) for t, _, c, _ in stored_labels(human_run)] == [(1, "tie")]
        assert seen == {"dialogs": [], "console": [], "errors": []}
    finally:
        app.stop()
