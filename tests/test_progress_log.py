"""hpcft.core.progress_log: the one reader of progress.jsonl, on the files a live or killed writer
leaves (torn last line, stray text, a file being appended) and on a tail longer than its first read."""

from __future__ import annotations

import json
import threading
import time

from hpcft.core import progress_log
from hpcft.core.progress_log import last_progress, read_jsonl, read_progress


def _line(**fields) -> str:
    return json.dumps(fields) + "\n"


def test_missing_file_reads_as_nothing(tmp_path):
    assert read_progress(tmp_path / "progress.jsonl") == []
    assert last_progress(tmp_path / "progress.jsonl") is None


def test_torn_stray_and_non_object_lines_are_skipped(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text(_line(event="start", step=0) + "hpcft: a stray print\n" + "\n" + "42\n" + "[1, 2]\n"
                    + '{"event": "train", "st' + _line(event="train", step=5)  # a killed writer's torn line
                    + '{"event": "train", "step": 10, "lo')                     # still being written
    assert [e["step"] for e in read_progress(path)] == [0, 5]
    assert last_progress(path) == {"event": "train", "step": 5}


def test_nan_and_undecodable_bytes(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_bytes(b'{"event": "nan", "loss": NaN}\n\xff\xfe garbage\n' + _line(event="eval").encode())
    events = read_progress(path)
    assert [e["event"] for e in events] == ["nan", "eval"] and events[0]["loss"] != events[0]["loss"]


def test_limit_stops_early(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(_line(i=i) for i in range(5)))
    assert read_jsonl(path, limit=2) == [{"i": 0}, {"i": 1}]


def test_last_progress_reads_back_past_a_long_last_line(tmp_path, monkeypatch):
    monkeypatch.setattr(progress_log, "TAIL_BYTES", 64)
    path = tmp_path / "progress.jsonl"
    metrics = {f"metric_{i}": i / 7 for i in range(200)}
    path.write_text(_line(event="start") * 50 + _line(event="eval", metrics=metrics) + '{"event": "tr')
    assert last_progress(path)["metrics"] == metrics
    path.write_text(_line(event="start", step=1))  # shorter than the window: read from the start
    assert last_progress(path) == {"event": "start", "step": 1}


def test_a_file_being_appended_never_yields_a_partial_event(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text("")
    done = threading.Event()

    def writer():
        with open(path, "a", encoding="utf-8") as fh:
            for step in range(300):
                line = _line(event="train", step=step, pad="x" * 300)
                fh.write(line[:100])  # a line reaches the file in pieces
                fh.flush()
                time.sleep(0.0005)
                fh.write(line[100:])
                fh.flush()
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        while not done.is_set():
            events = read_progress(path)
            assert [e["step"] for e in events] == list(range(len(events)))
            last = last_progress(path)
            assert last is None or (last["pad"] == "x" * 300 and last["step"] >= len(events) - 1)
    finally:
        t.join()
    assert last_progress(path)["step"] == 299 and len(read_progress(path)) == 300
