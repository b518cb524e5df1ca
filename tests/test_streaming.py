"""``train.streaming: true`` (issue 28): a text corpus read as a stream, cut into the blocks the
in-memory text path cuts, with its position checkpointed, so a requeued job trains on the blocks
it would have seen (hpcft/worker/data/stream.py; the rules: hpcft/core/streaming.py)."""

from __future__ import annotations

import json
import signal

import pytest

from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama, make_tokenizer

pytestmark = pytest.mark.worker

WORDS = "the apple is red and the cloud is white and the sky is blue while the grass is green".split()


def _docs(n: int = 30) -> list[str]:
    return [" ".join(WORDS[(i * 5) % len(WORDS):] + WORDS * (1 + i % 4)) for i in range(n)]


def _corpus(path, n: int = 30):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(n)))
    return path


@pytest.mark.parametrize("keep_last", [True, False])
@pytest.mark.parametrize("isolate", [False, True])
def test_the_streamed_blocks_are_the_in_memory_blocks_and_resume_from_any_of_them(keep_last, isolate):
    from hpcft.worker.data import llm as ld
    from hpcft.worker.data.stream import blocks

    docs = [list(range(100 * k, 100 * k + n)) for k, n in enumerate([5, 12, 3, 17, 8, 1, 9], start=1)]
    want = ld.text_blocks(docs, 8, keep_last=keep_last, isolate=isolate)
    got = list(blocks(enumerate(docs), 8, keep_last, isolate))
    assert [b for b, _, _ in got] == want
    for k, (_, row, offset) in enumerate(got):   # a stream resumed after block k gives exactly the rest
        rest = list(blocks(((r, docs[r]) for r in range(row, len(docs))), 8, keep_last, isolate, offset))
        assert [b for b, _, _ in rest] == want[k + 1:], (k, row, offset)


def test_a_stream_resumed_from_a_position_goes_on_with_the_same_blocks_across_passes(tmp_path):
    from itertools import islice

    from hpcft.core.assets import JobAsset
    from hpcft.worker.data import llm as ld
    from hpcft.worker.data.stream import TextStream, open_rows

    tok = make_tokenizer(tmp_path / "tok")
    data = _corpus(tmp_path / "c.jsonl", 12)
    ref = JobAsset("file", str(data), path=data, local=True)
    renderer = ld.Renderer(tok)

    def stream(resume=None):
        return TextStream(lambda: open_rows(ref, "train"), lambda r: ld.encode(tok, renderer, r, "text", 16)[0]["input_ids"],
                          16, resume=lambda: resume)

    flat = [i for d in _docs(12) for i in ld.encode(tok, renderer, {"text": d}, "text", 16)[0]["input_ids"]]
    per_pass = -(-len(flat) // 16)   # blocks in one pass, its last one short
    total = 2 * per_pass + 5
    whole = stream()
    first = list(islice(iter(whole), total))
    assert whole.last["pass"] == 2, whole.last
    assert [i for b in first[:per_pass] for i in b["input_ids"]] == flat   # pass 1: every token, in order
    assert first[per_pass]["input_ids"] == flat[:16]                        # pass 2 starts at the top
    for k in (1, 7, per_pass - 1, per_pass, per_pass + 3, 2 * per_pass):
        state = whole.state_after(k)
        again = list(islice(iter(stream(state)), total - k))
        assert again == first[k:], k
        assert state["tokens"] == sum(len(b["input_ids"]) for b in first[:k])


def _job(tmp_path, **train):
    from hpcft.core.job import Job

    spec = {"task": "causal-lm", "model": "m", "dataset": str(_corpus(tmp_path / "c.jsonl")), "data_format": "text",
            "streaming": True, "max_steps": 10, **train}
    return Job.model_validate({"name": "s", "train": spec})


@pytest.mark.parametrize("extra, says", [
    ({"max_steps": None}, "a stream has no length to count epochs in; set train.max_steps"),
    ({"data_format": "alpaca"}, "streaming: reads data_format: text corpora"),
    ({"data_cache": True}, "data_cache: true caches a tokenized copy of the whole corpus"),
    ({"preprocess": "cpu-job"}, "preprocess: cpu-job tokenizes the whole corpus ahead"),
    ({"eval_split": "validation"}, "a streamed run trains only"),
])
def test_what_a_stream_cannot_do_is_refused_in_one_line(tmp_path, extra, says):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as exc:
        _job(tmp_path, **extra)
    text = str(exc.value)
    assert says in text, text


def test_a_mix_and_a_classifier_cannot_stream(tmp_path):
    from pydantic import ValidationError

    from hpcft.core.job import Job

    other = _corpus(tmp_path / "d.jsonl")
    with pytest.raises(ValidationError, match="one corpus at a time"):
        _job(tmp_path, dataset=[str(other), str(other)])
    with pytest.raises(ValidationError, match="streaming: only for task: causal-lm"):
        Job.model_validate({"name": "s", "train": {"task": "sequence-classification", "model": "m",
                                                   "dataset": "glue/mrpc", "streaming": True}})
    assert _job(tmp_path).train.streaming is True


@pytest.mark.slow
def test_a_requeued_streamed_run_trains_on_the_blocks_it_would_have_seen(tmp_path, hpcft_home):
    """Uninterrupted, and stopped by the time-limit signal at step 5 then resumed: the same loss at
    every step (the same blocks, in the same order), the checkpoint's position after exactly the
    blocks its 5 steps trained on, and the tokens counted as they streamed."""
    from devtools.runs import make_run, run_worker, start_paused_worker
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local
    from hpcft.worker.data.stream import STATE
    from hpcft.worker.timelimit import EXIT_REQUEUE

    register_local(Cache(hpcft_home / "cache"), "model", LLAMA_ID,
                   make_tiny_llama(tmp_path / "llama", decoys=False), aliases=["llama3-8b-instruct"])
    data = _corpus(tmp_path / "corpus.jsonl", 12)

    def job(name):
        return {"name": name, "executor": "local", "train": {
            "task": "causal-lm", "model": "llama3-8b-instruct", "dataset": str(data), "data_format": "text",
            "streaming": True, "max_steps": 10, "batch_size": 2, "max_seq_length": 24, "logging_steps": 1,
            "sample_prompts": 0, "seed": 3, "method": "full", "learning_rate": 1e-3}}

    def losses(paths):
        return {e["step"]: e["loss"] for e in map(json.loads, paths.progress.read_text().splitlines())
                if e["event"] == "train"}

    ref = make_run(job("stream-ref"))
    proc = run_worker(ref, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    paths = make_run(job("stream-requeued"))
    proc = start_paused_worker(paths, step=5)
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_REQUEUE, out[-3000:]
    [ckpt] = sorted((paths.dir / "checkpoints").glob("checkpoint-*"))
    stop = int(ckpt.name.split("-")[1])
    position = json.loads((ckpt / STATE).read_text())
    assert position["blocks"] == stop * 2, position
    proc = run_worker(paths, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resuming from {ckpt.name}" in proc.stdout

    a, b = losses(ref), losses(paths)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert b == pytest.approx(a, rel=1e-5), (a, b)
    m_ref, m = json.loads(ref.metrics.read_text()), json.loads(paths.metrics.read_text())
    assert m["data"]["streaming"] is True and m["resumes"] == 1
    assert m["data"]["blocks"] == m_ref["data"]["blocks"] == 20
    assert m["train"]["real_tokens"] == m_ref["train"]["real_tokens"] == m["data"]["tokens"] > 0
