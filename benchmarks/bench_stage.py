"""Staging benchmarks against the loopback hub (devtools/hub), in a separate server process.

1. Bytes fetched for the fixture BERT repo (with .bin/.h5/.msgpack/.onnx/.ot/.mlmodel
   duplicates) against the repo's total: the saving of fetching only what a job needs.
2. Throughput of one 200 MB file: ``hpcft stage`` (download + sha256 + rename) against
   ``curl`` on the same URL in the same run. Target: ratio >= 0.8.
3. Several files (4 x 50 MB shards): hpcft's parallel download against curl, one file
   after another and ``curl --parallel``. Target: ratio vs curl --parallel >= 0.9.
4. LLM-sized shards (4 x 500 MB, as Llama/Qwen checkpoints are split): the same against
   ``curl --parallel`` (skip with ``--big-shard-mb 0``).
5. With ``--baseline REF``: the same one big file and the same shards staged by hpcft as it was
   at git commit REF (its ``hpcft/`` exported to a temp folder), alternating with today's, in the
   same run. Used for "the safety checks cost nothing": target ratio (REF time / ours) >= 0.95.

    python benchmarks/bench_stage.py [--size-mb 200] [--repeat 3] [--big-shard-mb 500] [--baseline REF] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = r"""
import sys, threading, json
sys.path.insert(0, {root!r})
from devtools.hub.server import HubServer
from devtools.hub.fixtures import make_tiny_bert
hub = HubServer(lfs_threshold=1 << 20)
hub.add_repo("model", "google-bert/bert-base-uncased", make_tiny_bert({work!r} + "/bert"))
hub.add_repo("model", "bench/big", {work!r} + "/big")
hub.add_repo("model", "bench/sharded", {work!r} + "/sharded")
if {big!r}:
    hub.add_repo("model", "bench/sharded-big", {work!r} + "/sharded-big")
hub.start()
print("READY", hub.url, flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
"""


def _write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            fh.write(block[:min(left, len(block))])
            left -= len(block)


def _config(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": "bert"}\n')


def _stage(url: str, cache: Path, name: str, parallel: int, root: Path = ROOT) -> dict:
    cfg = cache.parent / "config.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f"sources:\n  parallel: {parallel}\n")
    env = {**os.environ, "HF_ENDPOINT": url, "HPCFT_CACHE": str(cache), "HPCFT_HOME": str(cache.parent),
           "HPCFT_CONFIG": "/nonexistent", "HPCFT_USER_CONFIG": str(cfg)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hpcft.cli.main", "stage", name, "--source", "hf", "--json", "-q"],
                          env=env, capture_output=True, text=True, cwd=root)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"hpcft stage failed: {proc.stderr}")
    out = json.loads(proc.stdout)
    out["wall"] = wall
    return out


def _curl(urls: list[str], dest: Path, parallel: bool = False) -> float:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["curl", "-sS", "--fail", "-H", "Accept-Encoding: identity"]
    if parallel:
        cmd += ["--parallel", "--parallel-max", str(len(urls))]
    for i, u in enumerate(urls):
        cmd += ["-o", str(dest / f"f{i}"), u]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--big-shard-mb", type=int, default=500)
    ap.add_argument("--baseline", metavar="REF", help="also stage with hpcft as of this git commit (same run)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the throughput comparison")

    work = Path(tempfile.mkdtemp(prefix="hpcft-bench-"))
    size = args.size_mb * 1_000_000
    _write_random(work / "big" / "model.safetensors", size)
    _config(work / "big")
    shard = size // args.shards
    for i in range(args.shards):
        _write_random(work / "sharded" / f"model-{i + 1:05d}-of-{args.shards:05d}.safetensors", shard)
    _config(work / "sharded")
    big = args.big_shard_mb * 1_000_000
    for i in range(args.shards if big else 0):
        _write_random(work / "sharded-big" / f"model-{i + 1:05d}-of-{args.shards:05d}.safetensors", big)
    if big:
        _config(work / "sharded-big")
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(root=str(ROOT), work=str(work), big=bool(big))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = ""
        while not line.startswith("READY"):  # libraries may print first
            line = server.stdout.readline()
            if not line:
                raise SystemExit("hub did not start")
        url = line.split()[1]
        results: dict = {}
        m = statistics.median

        # 1. the saving
        out = _stage(url, work / "c-bert" / "cache", "bert-base-uncased", 4)
        a = out["assets"][0]
        repo_total = sum(p.stat().st_size for p in (work / "bert").rglob("*") if p.is_file())
        results["bert"] = {"fetched": out["fetched_bytes"], "repo_total": repo_total, "saved": a["saved_bytes"],
                           "files": a["files"], "skipped": len(a["skipped"])}

        # 2. one big file
        sha = json.loads(subprocess.run(["curl", "-sS", f"{url}/api/models/bench/big/revision/main"],
                                        capture_output=True, text=True, check=True).stdout)["sha"]
        big_url = f"{url}/bench/big/resolve/{sha}/model.safetensors"
        ours, curls, verified = [], [], []
        for r in range(args.repeat):
            curls.append(_curl([big_url], work / f"curl-big-{r}"))
            t0 = time.perf_counter()
            subprocess.run(["sha256sum", str(work / f"curl-big-{r}" / "f0")], check=True, capture_output=True)
            verified.append(curls[-1] + time.perf_counter() - t0)
            o = _stage(url, work / f"c-big-{r}" / "cache", "bench/big", 4)
            ours.append(o["seconds"])
            shutil.rmtree(work / f"c-big-{r}")
            shutil.rmtree(work / f"curl-big-{r}")
        t_ours, t_curl = statistics.median(ours), statistics.median(curls)
        results["big"] = {"bytes": size, "hpcft_s": t_ours, "curl_s": t_curl, "hpcft_MBps": size / t_ours / 1e6,
                          "curl_MBps": size / t_curl / 1e6, "ratio": t_curl / t_ours,
                          "curl_sha256sum_s": statistics.median(verified),
                          "ratio_vs_curl_sha256sum": statistics.median(verified) / t_ours, "cpus": os.cpu_count()}

        # 3. several files
        shards = [f"{url}/bench/sharded/resolve/main/model-{i + 1:05d}-of-{args.shards:05d}.safetensors"
                  for i in range(args.shards)]
        seq, par, ours1, oursn = [], [], [], []
        for r in range(args.repeat):
            seq.append(_curl(shards, work / f"curl-s-{r}"))
            par.append(_curl(shards, work / f"curl-p-{r}", parallel=True))
            ours1.append(_stage(url, work / f"c-s1-{r}" / "cache", "bench/sharded", 1)["seconds"])
            oursn.append(_stage(url, work / f"c-sn-{r}" / "cache", "bench/sharded", args.shards)["seconds"])
            for d in (f"curl-s-{r}", f"curl-p-{r}", f"c-s1-{r}", f"c-sn-{r}"):
                shutil.rmtree(work / d)
        results["shards"] = {"files": args.shards, "bytes": shard * args.shards, "curl_seq_s": m(seq),
                             "curl_parallel_s": m(par), "hpcft_1_s": m(ours1), "hpcft_parallel_s": m(oursn),
                             "ratio_vs_curl_parallel": m(par) / m(oursn), "ratio_vs_curl_seq": m(seq) / m(oursn)}

        # 4. LLM-sized shards: hpcft's parallel download against curl --parallel
        if big:
            urls = [f"{url}/bench/sharded-big/resolve/main/model-{i + 1:05d}-of-{args.shards:05d}.safetensors"
                    for i in range(args.shards)]
            par, oursn = [], []
            for r in range(args.repeat):
                par.append(_curl(urls, work / f"curl-bp-{r}", parallel=True))
                shutil.rmtree(work / f"curl-bp-{r}")
                oursn.append(_stage(url, work / f"c-bn-{r}" / "cache", "bench/sharded-big", args.shards)["seconds"])
                shutil.rmtree(work / f"c-bn-{r}")
            results["big_shards"] = {"files": args.shards, "bytes": big * args.shards, "curl_parallel_s": m(par),
                                     "hpcft_parallel_s": m(oursn), "ratio_vs_curl_parallel": m(par) / m(oursn)}
        # 5. today's hpcft against itself at an earlier commit, alternating, same hub, same files
        if args.baseline:
            base_root = work / "baseline"
            base_root.mkdir()
            tar = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "hpcft"], check=True,
                                 capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base_root)], input=tar, check=True)
            rows = {}
            for case, name, par_n in (("big", "bench/big", 4), ("shards", "bench/sharded", args.shards)):
                old, new = [], []
                for r in range(args.repeat):
                    old.append(_stage(url, work / f"c-old-{r}" / "cache", name, par_n, base_root)["seconds"])
                    new.append(_stage(url, work / f"c-new-{r}" / "cache", name, par_n)["seconds"])
                    shutil.rmtree(work / f"c-old-{r}")
                    shutil.rmtree(work / f"c-new-{r}")
                rows[case] = {"baseline_s": m(old), "hpcft_s": m(new), "ratio": m(old) / m(new)}
            results["baseline"] = {"ref": args.baseline, **rows}
    finally:
        server.stdin.close()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    b, g, s = results["bert"], results["big"], results["shards"]
    print(f"fixture BERT: fetched {b['fetched'] / 1e6:.2f} MB of {b['repo_total'] / 1e6:.2f} MB in the repo "
          f"({b['files']} files; skipped {b['skipped']} files, {b['saved'] / 1e6:.2f} MB, "
          f"{100 * b['saved'] / b['repo_total']:.0f}% saved)")
    print(f"one {g['bytes'] / 1e6:.0f} MB file: hpcft {g['hpcft_s']:.2f} s ({g['hpcft_MBps']:.0f} MB/s, incl. sha256 "
          f"+ rename), curl {g['curl_s']:.2f} s ({g['curl_MBps']:.0f} MB/s): ratio {g['ratio']:.2f} (target >= 0.8); "
          f"vs curl then sha256sum {g['curl_sha256sum_s']:.2f} s: ratio {g['ratio_vs_curl_sha256sum']:.2f} "
          f"[{g['cpus']} CPUs; hub server in the same machine]")
    print(f"{s['files']} files x {s['bytes'] / s['files'] / 1e6:.0f} MB: hpcft parallel {s['hpcft_parallel_s']:.2f} s, "
          f"hpcft 1 at a time {s['hpcft_1_s']:.2f} s, curl --parallel {s['curl_parallel_s']:.2f} s, curl one after "
          f"another {s['curl_seq_s']:.2f} s: ratio vs curl --parallel {s['ratio_vs_curl_parallel']:.2f}, "
          f"vs curl sequential {s['ratio_vs_curl_seq']:.2f} (target >= 0.9 vs curl --parallel)")
    if "big_shards" in results:
        bs = results["big_shards"]
        print(f"{bs['files']} files x {bs['bytes'] / bs['files'] / 1e6:.0f} MB: hpcft parallel "
              f"{bs['hpcft_parallel_s']:.2f} s ({bs['bytes'] / bs['hpcft_parallel_s'] / 1e6:.0f} MB/s, incl. sha256), "
              f"curl --parallel {bs['curl_parallel_s']:.2f} s: ratio {bs['ratio_vs_curl_parallel']:.2f} "
              "(target >= 0.9)")
    if "baseline" in results:
        bl = results["baseline"]
        for case in ("big", "shards"):
            r = bl[case]
            print(f"{case}: hpcft now {r['hpcft_s']:.2f} s, hpcft at {bl['ref']} {r['baseline_s']:.2f} s: "
                  f"ratio {r['ratio']:.2f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
