"""`alignlab label` in a real headless browser (Playwright driving Debian's Chromium), the server in its own
process: rank with keys, ties, skip, undo, reload, kill -9 and resume, drag, two annotators, the token.

One browser for the module; each test starts its own server on a free port (port 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_jsonl
from label_server import CHROMIUM, RESPONSES, LabelServer, get, press_for, read_labels, shown_texts

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the dev extra)")
expect = sync_api.expect


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def responses(tmp_path) -> Path:
    return write_jsonl(RESPONSES, tmp_path / "responses.jsonl")


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(20_000)
    yield context.new_page()
    context.close()


def _at_row(page, row: int, done: int) -> list[str]:
    expect(page.locator("#row")).to_contain_text(f"row {row},")
    expect(page.locator("#progress")).to_contain_text(f"{done} of 4 done")
    return shown_texts(page)


def _ranks_shown(page) -> list[str]:
    return page.locator("#ranking .rank").all_inner_texts()


def _tie_then_skip_then_undo_both(page, shown: list[str], out: Path) -> None:
    """At row 2: a wrong key taken back with Backspace, b2 = b1 tied with '='; skip row 3; undo twice."""
    press_for(page, shown, "b3")
    page.keyboard.press("Backspace")
    assert _ranks_shown(page) == []
    for text in ("b2", "b1"):
        press_for(page, shown, text)
    page.keyboard.press("=")
    press_for(page, shown, "b3")
    assert _ranks_shown(page) == ["#1", "#1", "#3"]
    page.keyboard.press("Enter")
    _at_row(page, 3, 2)
    assert read_labels(out)[1]["ranks"] == [1, 1, 3]

    page.keyboard.press("s")
    _at_row(page, 4, 3)
    skip = read_labels(out)[2]
    assert skip["skipped"] is True and skip["ranks"] == [None, None, None] and skip["source_row"] == 3

    page.keyboard.press("u")  # undo the skip: row 3 again
    _at_row(page, 3, 2)
    assert len(read_labels(out)) == 2
    page.keyboard.press("u")  # undo row 2: shown again with its tie, ready to save
    _at_row(page, 2, 1)
    assert len(read_labels(out)) == 1
    assert _ranks_shown(page) == ["#1", "#1", "#3"]
    page.keyboard.press("Enter")
    _at_row(page, 3, 2)
    assert [label["ranks"] for label in read_labels(out)] == [[1, 3, 2], [1, 1, 3]]


def test_keys_tie_skip_undo_reload_kill_resume_drag_then_pairs(page, responses, tmp_path, cli):
    out = tmp_path / "ranked.jsonl"
    server = LabelServer(responses, out)
    page.goto(server.page_url("alice"))
    texts = RESPONSES[0]["responses"]
    shown = _at_row(page, 1, 0)
    assert sorted(shown) == sorted(texts)
    shown_before = shown
    for text in ("a best", "a middle", "a worst"):
        press_for(page, shown, text)
    assert _ranks_shown(page) == ["#1", "#2", "#3"]
    page.keyboard.press("Enter")
    shown = _at_row(page, 2, 1)
    (first,) = read_labels(out)  # on disk as soon as the page moved on
    assert first["ranks"] == [1, 3, 2] and first["annotator"] == "alice" and first["skipped"] is False
    assert [texts[i] for i in first["shown_order"]] == shown_before  # the order recorded is the order shown
    assert first["id"] == "p1" and first["source_row"] == 1 and first["prompt"] == "Which is best?"

    _tie_then_skip_then_undo_both(page, shown, out)

    page.reload()
    _at_row(page, 3, 2)

    server.kill()
    before = out.read_text()
    server = LabelServer(responses, out)
    assert "(2 there already)" in "".join(server.output)
    page.goto(server.page_url("alice"))
    shown = _at_row(page, 3, 2)  # resumed at the first unranked prompt
    assert out.read_text() == before

    page.drag_and_drop("#pool .card:has-text('c3')", "#ranking")
    assert _ranks_shown(page) == ["#1"]
    for text in ("c1", "c2"):
        press_for(page, shown, text)
    page.drag_and_drop("#ranking .card:has-text('c2')", "#ranking .card:has-text('c1')")  # c2 above c1
    assert page.locator("#ranking .card .text").all_inner_texts() == ["c3", "c2", "c1"]
    page.keyboard.press("Enter")

    # identical texts are one card (x2) and share a rank; Shift+number ties with the one above
    shown = _at_row(page, 4, 3)
    assert sorted(shown) == ["d other", "d same"]
    press_for(page, shown, "d same")
    press_for(page, shown, "d other", shift=True)
    assert _ranks_shown(page) == ["#1", "#1"]
    page.keyboard.press("Backspace")
    press_for(page, shown, "d other")
    assert _ranks_shown(page) == ["#1", "#3"]  # competition ranking: the repeated text counts twice
    page.keyboard.press("Enter")
    expect(page.locator("#summary")).to_contain_text("You ranked 4 and skipped 0 of 4 prompts")
    server.kill()

    labels = read_labels(out)
    assert [label["ranks"] for label in labels] == [[1, 3, 2], [1, 1, 3], [3, 2, 1], [1, 3, 1]]
    result = cli(["pairs", out, tmp_path / "pairs.jsonl"])
    assert result.code == 0, result.err
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a best", "a worst"), ("b1", "b3"), ("c3", "c1"),
                                                            ("d same", "d other")]
    assert "4 pairs from 4 prompts" in result.out


def test_two_annotators_keep_apart_and_stats(browser, responses, tmp_path, cli):
    out = tmp_path / "ranked.jsonl"
    server = LabelServer(responses, out)
    try:
        alice = browser.new_page()
        alice.goto(server.page_url("alice"))
        bob = browser.new_page()
        bob.goto(server.url)  # no name in the URL: the page asks for one
        bob.fill("#name", "bob")
        bob.keyboard.press("Enter")
        for who, order in ((alice, ["a best", "a middle", "a worst"]), (bob, ["a best", "a worst", "a middle"])):
            shown = _at_row(who, 1, 0)
            for text in order:
                press_for(who, shown, text)
            who.keyboard.press("Enter")
        shown = _at_row(bob, 2, 1)
        for text in ("b1", "b2", "b3"):
            press_for(bob, shown, text)
        bob.keyboard.press("Enter")
        _at_row(bob, 3, 2)
        assert "annotator=bob" in bob.url  # a reload keeps the name
        alice.reload()
        _at_row(alice, 2, 1)  # bob's labels do not move alice on

        labels = read_labels(out)
        assert [(label["annotator"], label["source_row"]) for label in labels] == [("alice", 1), ("bob", 1), ("bob", 2)]
        assert labels[0]["ranks"] == [1, 3, 2] and labels[1]["ranks"] == [1, 2, 3]
        # the server answers only to loopback Host names, and only JSON bodies (no cross-site form posts)
        assert get(server.url, headers={"Host": "attacker.example"})[0] == 403
        body = json.dumps({"annotator": "alice", "row": 2, "tiers": None}).encode()
        assert get(server.url + "api/label", headers={"Content-Type": "text/plain"}, data=body)[0] == 422
        assert len(read_labels(out)) == 3
    finally:
        server.kill()

    result = cli(["label", "--stats", out])
    assert result.code == 0, result.err
    assert "alice 1, bob 2" in result.out
    assert "alice vs bob: 0.333 (1 prompts)" in result.out  # tau-b of [1,3,2] and [1,2,3]: (2 - 1) / 3
    assert "ordinal:" in result.out and "interval:" in result.out


def test_token_required_when_not_loopback_only(page, responses, tmp_path):
    out = tmp_path / "ranked.jsonl"
    server = LabelServer(responses, out, "--require-token")  # the mode any non-loopback --host gets
    try:
        assert "?token=" in server.url
        token = server.url.split("?token=")[1]
        base = server.url.split("?")[0]
        assert "".join(server.output).count(token) == 1  # printed once
        assert get(base)[0] == 403
        assert get(base + "?token=" + "x" * len(token))[0] == 403
        assert get(base + "api/next?annotator=carol")[0] == 403
        assert get(base + "api/next?annotator=carol", headers={"X-Alignlab-Token": token})[0] == 200
        page.goto(server.page_url("carol"))
        shown = _at_row(page, 1, 0)
        for text in ("a worst", "a best", "a middle"):
            press_for(page, shown, text)
        page.keyboard.press("Enter")
        _at_row(page, 2, 1)
        assert read_labels(out)[0]["ranks"] == [2, 1, 3]
    finally:
        server.kill()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), path
