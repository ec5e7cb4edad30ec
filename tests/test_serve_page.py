"""The chat page at / in headless Chromium (Debian's package, driven by Playwright's pip
package through executable_path): the model's name, a streamed reply, the stop button, and a
second turn that carries the conversation. stories260K on the reference backend; a gate holds
the engine's decode steps where the test must see a reply mid-stream."""

from __future__ import annotations

import json
import os
import shutil

import httpx
import pytest

from conftest import IN_CI
from fastllm import Engine, Model
from serve_helpers import Gate, idle, metrics, serving, wait_for


def chromium() -> str:
    path = os.environ.get("FASTLLM_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    if path is None:
        msg = "Chromium not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(msg + ": CI=true requires it")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="module")
def served(stories260k):
    m = Model.load(stories260k, backend="reference", n_seq=2, n_ctx=512)
    gate = Gate(m)
    with Engine(m) as eng, serving(eng) as base:
        yield base, gate
    gate.remove()


@pytest.fixture(scope="module")
def page(served):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(),
                                     args=["--no-sandbox", "--disable-gpu"])
        pg = browser.new_page()
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def reply(base: str, messages: list[dict], max_tokens: int) -> str:
    r = httpx.post(f"{base}/v1/chat/completions", timeout=120,
                   json={"messages": messages, "max_tokens": max_tokens, "temperature": 0})
    return r.json()["choices"][0]["message"]["content"]


def test_chat_page(served, page):
    base, gate = served
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    page.goto(base + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'stories260K'")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "24")
    bubbles = page.locator(".msg.assistant")

    # 1. a reply streams in: the first token shows while the engine is held, the rest after
    gate.close()
    page.fill("#input", "Tell me about a cat.")
    page.press("#input", "Enter")
    page.wait_for_function("(document.querySelector('.msg.assistant')?.textContent || '')"
                           ".length > 0")
    assert bubbles.nth(0).get_attribute("data-state") == "streaming"
    assert page.locator("#stop").is_enabled() and page.locator("#send").is_disabled()
    gate.open()
    page.wait_for_selector(".msg.assistant[data-state=done]")
    first = bubbles.nth(0).text_content()
    convo = [{"role": "user", "content": "Tell me about a cat."}]
    assert first == reply(base, convo, 24)
    assert page.locator(".msg.user").nth(0).text_content() == "Tell me about a cat."

    # 2. Stop: the reply ends where it was, the server cancels the request
    before = metrics(base)
    page.fill("#max_tokens", "300")
    gate.close()
    page.fill("#input", "And then?")
    page.click("#send")
    page.wait_for_function("(document.querySelectorAll('.msg.assistant')[1]?.textContent"
                           " || '').length > 0")
    partial = bubbles.nth(1).text_content()
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-state=stopped]")
    gate.open()
    assert bubbles.nth(1).text_content() == partial + "(stopped)"
    wait_for(lambda: idle(base), "the stopped request to leave its slot")
    key = 'fastllm_requests_total{endpoint="chat",outcome="cancelled"}'
    wait_for(lambda: metrics(base).get(key, 0) - before.get(key, 0) == 1, "the cancel")

    # 3. a second turn carries the whole conversation, the stopped part included, and finds
    # the previous turns in the slot's cache
    page.fill("#max_tokens", "16")
    page.fill("#input", "What happened next?")
    page.press("#input", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.assistant[data-state=done]')"
                           ".length === 2")
    convo += [{"role": "assistant", "content": first},
              {"role": "user", "content": "And then?"},
              {"role": "assistant", "content": partial},
              {"role": "user", "content": "What happened next?"}]
    assert sent[-1]["messages"] == convo and sent[-1]["stream"] is True
    assert sent[-1]["model"] == "stories260K"
    assert bubbles.nth(2).text_content() == reply(base, convo, 16)
    assert "prompt tokens cached" in page.text_content("#status")
    assert page.locator(".msg.error").count() == 0
    if os.environ.get("FASTLLM_PAGE_SCREENSHOT"):
        page.screenshot(path=os.environ["FASTLLM_PAGE_SCREENSHOT"])
