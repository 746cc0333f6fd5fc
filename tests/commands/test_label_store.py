"""The label file of `alignlab label` without a browser: what a label row holds, undo, a cut-off last line,
labels of another responses file, the lock, the command's errors, and that the page ships in the wheel."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_jsonl
from label_server import RESPONSES, read_labels

from alignlab.commands.label.store import (LabelConflict, LabelStore, competition_ranks, read_log, shown_groups,
                                           tiers_from_ranks)
from alignlab.errors import AlignlabError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def responses(tmp_path) -> Path:
    return write_jsonl([{**row, "scores": [0.5] * len(row["responses"])} for row in RESPONSES],
                       tmp_path / "responses.jsonl")


def test_ranks_from_tiers_and_back():
    assert competition_ranks([[1], [0, 2], [3]], 4) == [2, 1, 2, 4]
    assert tiers_from_ranks([2, 1, 2, 4]) == [[1], [0, 2], [3]]
    assert tiers_from_ranks([None, 1, None]) == [[1]]
    for bad in ([[0], [0, 1]], [[0]], [[0], [1], [3]]):
        with pytest.raises(ValueError, match="exactly once"):
            competition_ranks(bad, 3)


def test_a_label_row_and_its_order(responses, tmp_path):
    store = LabelStore(str(responses), str(tmp_path / "ranked.jsonl"), seed=3)
    assert [item.row for item in store.items] == [1, 2, 3, 4] and store.left_out == 1
    assert store.items[3].groups == ((0, 2), (1,))  # the repeated text is one card
    label = store.record("alice", 1, [[2], [0], [1]], seconds=4.26)
    (on_disk,) = read_labels(tmp_path / "ranked.jsonl")
    assert on_disk == label
    assert label["ranks"] == [2, 3, 1] and label["seconds"] == 4.3 and label["id"] == "p1"
    assert "scores" not in label  # `alignlab pairs` takes scores or ranks, never both
    assert label["shown_order"] == [i for g in shown_groups(store.items[0], "alice", 3) for i in g]
    orders = {tuple(label["shown_order"])} | {tuple(i for g in shown_groups(store.items[0], name, 3) for i in g)
                                              for name in ("bob", "carol", "dave", "erin")}
    assert len(orders) > 1  # annotators see different orders (position bias does not line up)
    with pytest.raises(LabelConflict, match="not alice's next prompt"):
        store.record("alice", 1, [[0], [1], [2]])  # a second submit of the same prompt
    for row in (1, 2, 3):
        store.record("bob", row, None)  # skips
    with pytest.raises(ValueError, match="same text"):
        store.record("bob", 4, [[0], [1, 2]])  # responses 0 and 2 are the same text: they must share a rank
    assert store.progress("bob") == {"total": 4, "ranked": 0, "skipped": 3}


def test_undo_rewrites_atomically_and_only_that_annotators_last(responses, tmp_path):
    out = tmp_path / "ranked.jsonl"
    store = LabelStore(str(responses), str(out))
    store.record("alice", 1, [[0], [1, 2]])
    store.record("bob", 1, [[1], [0], [2]])
    store.record("alice", 2, None)
    assert store.undo("alice")["source_row"] == 2
    assert [(r["annotator"], r["source_row"]) for r in read_labels(out)] == [("alice", 1), ("bob", 1)]
    assert store.next_item("alice").row == 2 and store.next_item("bob").row == 2
    assert store.undo("alice")["source_row"] == 1 and store.undo("bob")["source_row"] == 1
    assert read_labels(out) == [] and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(LabelConflict, match="no label to undo"):
        store.undo("alice")
    # a new store on the same file resumes where the labels stop
    store.record("alice", 1, [[0], [1], [2]])
    assert LabelStore(str(responses), str(out)).next_item("alice").row == 2


def test_a_last_line_cut_off_mid_write_is_dropped(responses, tmp_path, capsys):
    out = tmp_path / "ranked.jsonl"
    LabelStore(str(responses), str(out)).record("alice", 1, [[0], [1], [2]])
    good = out.read_text()
    out.write_text(good + good[:40])  # killed during a write: no newline, not JSON
    assert len(read_log(out, repair=False)) == 1 and out.read_text() == good + good[:40]
    store = LabelStore(str(responses), str(out))
    assert "dropping a partly written last line" in capsys.readouterr().out
    assert out.read_text() == good and store.next_item("alice").row == 2


def test_labels_of_another_file_or_command_are_refused(responses, tmp_path, cli):
    out = tmp_path / "ranked.jsonl"
    LabelStore(str(responses), str(out)).record("alice", 1, [[0], [1], [2]])
    changed = [dict(row) for row in RESPONSES]
    changed[0] = {**changed[0], "responses": ["other", "texts", "now"]}
    result = cli(["label", write_jsonl(changed, tmp_path / "changed.jsonl"), "--out", out, "--port", "0"])
    assert result.code == 2 and "ranked.jsonl, line 1: labels row 1 of another responses file" in result.err
    write_jsonl([{"prompt": "x", "chosen": "a", "rejected": "b"}], tmp_path / "pairs.jsonl")
    result = cli(["label", responses, "--out", tmp_path / "pairs.jsonl", "--port", "0"])
    assert result.code == 2 and "not a label written by alignlab label" in result.err


def test_command_errors(responses, tmp_path, cli):
    result = cli(["label", responses])
    assert result.code == 2 and "--out ranked.jsonl" in result.err
    result = cli(["label", "--stats", tmp_path / "missing.jsonl"])
    assert result.code == 2 and "no such file" in result.err
    bad = write_jsonl([{"prompt": "p", "responses": "not a list"}], tmp_path / "bad.jsonl")
    result = cli(["label", bad, "--out", tmp_path / "out.jsonl", "--port", "0"])
    assert result.code == 2 and "bad.jsonl, line 1, field 'responses'" in result.err


def test_the_token_is_needed_beyond_loopback():
    from alignlab.commands.label.server import _host_name, needs_token

    assert not needs_token("127.0.0.1") and not needs_token("localhost") and not needs_token("::1")
    assert not needs_token("127.0.0.2")  # all of 127/8 is this machine
    assert needs_token("0.0.0.0") and needs_token("::") and needs_token("192.168.1.5") and needs_token("myhost")
    assert needs_token("127.0.0.1", require_token=True)
    assert _host_name("127.0.0.1:8765") == "127.0.0.1" and _host_name("[::1]:8765") == "::1"
    assert _host_name("localhost") == "localhost" and _host_name("evil.example:80") == "evil.example"


def test_a_second_server_on_the_same_file_is_refused(tmp_path):
    from alignlab.commands.label.server import _lock

    first = _lock(tmp_path / "ranked.jsonl")
    try:
        with pytest.raises(AlignlabError, match="another `alignlab label` is writing"):
            _lock(tmp_path / "ranked.jsonl")
    finally:
        first.close()
    _lock(tmp_path / "ranked.jsonl").close()  # free again once the first has stopped


def test_the_page_ships_as_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["alignlab"]
    shipped = {path for pattern in patterns for path in (REPO / "alignlab").glob(pattern)}
    static = [p for p in (REPO / "alignlab/commands/label/static").iterdir() if p.is_file()]
    assert {p.name for p in static} >= {"index.html", "label.js", "label.css"}
    assert set(static) <= shipped
