"""Streaming a corpus larger than memory (issue 28): ``train.streaming``'s data path over a synthetic
``data_format: text`` corpus, against the in-memory text path on a slice of the same corpus.

    .venv/bin/python benchmarks/bench_streaming.py            # a 2 GB corpus (~10 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench_streaming.py --quick    # 100 MB
    .venv/bin/python benchmarks/bench_streaming.py --gb 0.5

The corpus: JSON lines ``{"text": ...}`` of 20 to 4,000 words drawn from a fixed word list, and a
word-level tokenizer over that list (every word one token, the EOS after each document), so the
tokens a pass must give are known without tokenizing twice: the words plus one EOS per document.

- **stream**: a fresh process runs one pass of :class:`hpcft.worker.data.stream.TextStream` (the
  worker's own class, over ``datasets``' streaming reader, max_seq_length 2048), counting every
  token of every block and sampling its resident memory (VmRSS) at each tenth of the corpus.
- **in memory** (the baseline): a fresh process runs the worker's non-streaming data phase
  (:func:`hpcft.worker.data.mix.load_sft_data`, no cache) on the first ``--slice-mb`` of the corpus.

Figures: tokens counted against tokens expected (target: equal, no token lost), the stream's RSS
from its first tenth to its end (target: flat, at most 1.15x), its peak RSS against the in-memory
path's on a slice 1/20 as large, and tokens/s. Writes benchmarks/results/bench_streaming.json; exit
1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORDS = ("apple banana cherry river mountain table window garden yellow purple quickly slowly because although "
         "tensor gradient optimizer cluster partition node memory token sequence stream block corpus").split()
MAX_LEN = 2048
FLAT = 1.15


def make_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "<pad>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(str(folder))
    return folder


def make_corpus(path: Path, size: int, seed: int = 0) -> tuple[int, int, int]:
    """(bytes, documents, words) of a corpus of about ``size`` bytes."""
    r = random.Random(seed)
    written = docs = words = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < size:
            n = r.randint(20, 4000)
            line = json.dumps({"text": " ".join(r.choices(WORDS, k=n))}) + "\n"
            fh.write(line)
            written += len(line)
            docs += 1
            words += n
    return written, docs, words


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_stream(corpus: Path, tok_dir: Path, docs: int) -> dict:
    from transformers import AutoTokenizer

    from hpcft.core.assets import JobAsset
    from hpcft.worker.data import llm as ld
    from hpcft.worker.data.stream import TextStream, open_rows

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    ref = JobAsset("file", str(corpus), path=corpus, local=True)
    renderer = ld.Renderer(tok)
    stream = TextStream(lambda: open_rows(ref, "train"),
                        lambda row: ld.encode(tok, renderer, row, "text", MAX_LEN)[0]["input_ids"], MAX_LEN)
    samples, tokens, nblocks, t0 = [], 0, 0, time.perf_counter()
    mark = 1
    for block in stream:
        if stream.last["pass"] > 0:   # the first block of the second pass: one pass is done
            break
        tokens += len(block["input_ids"])
        nblocks += 1
        if stream.last["row"] >= mark * docs / 10:
            samples.append(round(rss_mb(), 1))
            mark += 1
    seconds = time.perf_counter() - t0
    samples.append(round(rss_mb(), 1))
    return {"tokens": tokens, "blocks": nblocks, "seconds": round(seconds, 1), "rss_mb": samples,
            "peak_mb": round(peak_mb(), 1)}


def child_memory(corpus: Path, tok_dir: Path) -> dict:
    from transformers import AutoTokenizer

    from hpcft.core.assets import JobAsset
    from hpcft.core.job import Job
    from hpcft.worker.data import llm as ld
    from hpcft.worker.data.mix import load_sft_data

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    t = Job.model_validate({"name": "b", "train": {"task": "causal-lm", "model": "m", "dataset": str(corpus),
                                                   "data_format": "text", "max_seq_length": MAX_LEN,
                                                   "data_cache": False}}).train
    ref = JobAsset("file", str(corpus), path=corpus, local=True)
    t0 = time.perf_counter()
    data = load_sft_data(t, [ref], tok, ld.Renderer(tok))
    return {"tokens": data.real_tokens, "seconds": round(time.perf_counter() - t0, 1), "peak_mb": round(peak_mb(), 1)}


def run_child(kind: str, *args: str) -> dict:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench_streaming: the {kind} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=2.0, help="corpus size in GB (default 2)")
    ap.add_argument("--quick", action="store_true", help="a 100 MB corpus")
    ap.add_argument("--slice-mb", type=float, default=None, help="the in-memory baseline's slice (default: 1/20)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        out = child_stream(Path(rest[0]), Path(rest[1]), int(rest[2])) if kind == "stream" else \
            child_memory(Path(rest[0]), Path(rest[1]))
        print(json.dumps(out))
        return 0
    size = int((0.1 if a.quick else a.gb) * 1e9)
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        tmp = Path(tmp)
        tok_dir = make_tokenizer(tmp / "tok")
        corpus = tmp / "corpus.jsonl"
        t0 = time.perf_counter()
        nbytes, docs, words = make_corpus(corpus, size)
        print(f"corpus: {nbytes / 1e9:.2f} GB, {docs:,} documents, {words:,} words "
              f"(made in {time.perf_counter() - t0:.0f} s)", flush=True)
        slice_bytes = int((a.slice_mb * 1e6) if a.slice_mb else nbytes / 20)
        part = tmp / "slice.jsonl"
        with open(corpus, encoding="utf-8") as src, open(part, "w", encoding="utf-8") as dst:
            n = 0
            for line in src:
                if n >= slice_bytes:
                    break
                dst.write(line)
                n += len(line)
        memory = run_child("memory", str(part), str(tok_dir))
        print(f"in memory ({n / 1e6:.0f} MB slice): {memory['tokens']:,} tokens in {memory['seconds']} s, "
              f"peak RSS {memory['peak_mb']:.0f} MB", flush=True)
        stream = run_child("stream", str(corpus), str(tok_dir), str(docs))
    expected = words + docs   # every word one token, one EOS per document
    rss = stream["rss_mb"]
    flat = max(rss[1:]) / rss[1] if len(rss) > 2 else 1.0   # from the first tenth (imports and buffers settled)
    rate = stream["tokens"] / stream["seconds"] if stream["seconds"] else 0.0
    result = {"corpus_bytes": nbytes, "documents": docs, "tokens_expected": expected, "stream": stream,
              "in_memory": {**memory, "slice_bytes": n}, "rss_growth": round(flat, 3),
              "peak_vs_in_memory": round(stream["peak_mb"] / memory["peak_mb"], 2) if memory["peak_mb"] else None}
    print(f"stream ({nbytes / 1e9:.2f} GB, one pass): {stream['tokens']:,} tokens in {stream['blocks']:,} blocks, "
          f"{stream['seconds']} s ({rate:,.0f} tokens/s); expected {expected:,}: "
          f"{'every token' if stream['tokens'] == expected else 'MISSED ' + str(expected - stream['tokens'])}")
    print(f"stream RSS at each tenth (MB): {rss}; growth from the first tenth {flat:.3f}x (target <= {FLAT}x); "
          f"peak {stream['peak_mb']:.0f} MB = {result['peak_vs_in_memory']}x the in-memory path's on a corpus "
          f"{nbytes / max(n, 1):.0f}x smaller")
    out = ROOT / "benchmarks" / "results" / "bench_streaming.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    ok = stream["tokens"] == expected and flat <= FLAT
    print(f"bench_streaming: {'targets met' if ok else 'TARGET MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
