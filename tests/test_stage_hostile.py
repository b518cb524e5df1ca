"""A hostile mirror against ``hpcft stage``: it must fail safely, quickly and clearly.

Each attack is served by the loopback hub's hostile mode (devtools/hub/hostile.py) for a small,
otherwise normal repo, on every protocol that can carry it (HF, ModelScope, Modelers), and
``hpcft stage`` runs as the real CLI in a subprocess. Every attack asserts the same contract:

* the stage exits non-zero within DEADLINE seconds (start-up included);
* its error is one short ``hpcft: error:`` line (the last of stderr, no traceback) that names
  the bad entry (or what was wrong) and the mirror's endpoint URL;
* nothing outside the cache changed -- the test's whole tmp folder (the cache's parent with a
  neighbour's files, a decoy home with ``.ssh/authorized_keys``) is snapshotted before and
  after (devtools/fssnap.py) -- and inside the cache only ``tmp/`` and ``locks/`` may hold
  leftovers: no manifest, no staged file, no link anywhere else.

Names an attack aims at the decoy (``../`` deep enough to reach ``/``, an absolute path) point
into the test's own tmp folder, so a stage that does follow them is caught by the snapshot and
writes nowhere else on the machine.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.fssnap import describe, diff, snapshot
from devtools.hub.hostile import Recorder
from devtools.hub.pytest_fixtures import hub, hub_fixtures, hub_server  # noqa: F401
from devtools.hub.server import HubServer

pytestmark = pytest.mark.hub

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 15.0          # seconds a refused stage may take, interpreter start-up included
MAX_ERROR = 600          # characters of the one error line
SOURCES = ("hf", "modelscope", "modelers")
ENDPOINT_VAR = {"hf": "HF_ENDPOINT", "modelscope": "MODELSCOPE_ENDPOINT", "modelers": "OPENMIND_HUB_ENDPOINT"}
TOKEN_VAR = {"hf": "HF_TOKEN", "modelers": "OPENMIND_HUB_TOKEN"}
# the user config every attack runs under: fail fast, never retry
BASE_SOURCES = {"timeout_s": 3, "retries": 0}
MODEL_FILES = {"config.json", "model.safetensors", "tokenizer_config.json"}
_ids = itertools.count(1)


# ---------------------------------------------------------------------------- the site
@dataclass
class Outcome:
    rc: int | None           # None: killed at the deadline
    stdout: str
    stderr: str
    seconds: float

    @property
    def error_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class Site:
    """A test's world: a decoy home, a shared folder holding the cache and a neighbour's files,
    and the environment ``hpcft stage`` runs in (HOME, XDG_CONFIG_HOME, HPCFT_* all in here)."""

    root: Path
    home: Path
    shared: Path
    cache: Path
    env: dict

    def config(self, **sources) -> None:
        """The user config (``$XDG_CONFIG_HOME/hpcft/config.yaml``): ``sources:`` = BASE_SOURCES + these."""
        path = Path(self.env["XDG_CONFIG_HOME"]) / "hpcft" / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sources": {**BASE_SOURCES, **sources}}))  # JSON is YAML

    def point(self, source: str, url: str) -> None:
        self.env[ENDPOINT_VAR[source]] = url

    def stage(self, *args: str, env: dict | None = None, timeout: float = DEADLINE) -> Outcome:
        cmd = [sys.executable, "-m", "hpcft.cli.main", "stage", *args]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                                  env={**self.env, **(env or {})})
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return Outcome(None, out, err, time.monotonic() - t0)
        return Outcome(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)

    def outside(self) -> dict:
        """Everything in the test's world but the cache (its parent and the decoy home included)."""
        return snapshot(self.root, exclude=[self.cache])

    def cache_leftovers(self) -> list[str]:
        """What the cache holds outside tmp/ and locks/ other than folders: a manifest, a staged
        file, a link -- none may be left by a refused stage."""
        inside = snapshot(self.cache, exclude=[self.cache / "tmp", self.cache / "locks"])
        return [f"{path}: {describe(e)}" for path, e in sorted(inside.items()) if e[0] != "dir"]


_STRIP = ("HF_", "HUGGINGFACE_", "MODELSCOPE_", "OPENMIND_", "HPCFT_", "TRANSFORMERS_", "DATASETS_")


@pytest.fixture
def site(hub, tmp_path) -> Site:  # noqa: F811
    home, shared = tmp_path / "home", tmp_path / "shared"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh").chmod(0o700)
    keys = home / ".ssh" / "authorized_keys"
    keys.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDecoyDecoyDecoyDecoyDecoyDecoyDecoy user@login\n")
    keys.chmod(0o600)
    (home / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
    (home / "projects").mkdir()
    (home / "projects" / "x.json").write_text('{"mine": true}\n')
    (home / "shared-link").symlink_to(shared)  # recorded as a link, never followed
    (shared / "other-team").mkdir(parents=True)
    (shared / "other-team" / "data.json").write_text('{"theirs": true}\n')
    (shared / "README.txt").write_text("the group's shared folder\n")
    cache = shared / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP) and not k.lower().endswith("_proxy")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), HPCFT_HOME=str(tmp_path / "hpcft-home"),
               HPCFT_CACHE=str(cache), HPCFT_CONFIG=str(tmp_path / "no-cluster-config.yaml"),
               HF_ENDPOINT=hub.url, MODELSCOPE_ENDPOINT=hub.url, OPENMIND_HUB_ENDPOINT=hub.url,
               HPCFT_RETRY_BACKOFF_S="0.05", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               PYTHONUNBUFFERED="1")
    s = Site(tmp_path, home, shared, cache, env)
    s.config()
    return s


def _write_repo(folder: Path, kind: str = "model", weights: bytes | None = None,
                config: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# a small repo\n")
    if kind == "model":
        (folder / "config.json").write_bytes(config or b'{"model_type": "bert", "hidden_size": 32}\n')
        (folder / "tokenizer_config.json").write_text('{"do_lower_case": true}\n')
        (folder / "model.safetensors").write_bytes(weights if weights is not None else _weights())
    else:
        (folder / "train.jsonl").write_text("".join(f'{{"text": "row {i}", "label": {i % 2}}}\n' for i in range(50)))
        (folder / "test.jsonl").write_text('{"text": "t", "label": 0}\n')
    return folder


def _weights(seed: bytes = b"honest", size: int = 64 * 1024) -> bytes:
    out = b""
    block = seed
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return out[:size]


@pytest.fixture
def tiny(hub, tmp_path):  # noqa: F811
    """A small, otherwise normal model repo, served under a fresh id on every protocol."""
    rid = f"hostile/tiny-{next(_ids)}"
    hub.add_repo("model", rid, _write_repo(tmp_path / "served" / "model"))
    yield rid
    hub.remove_repo("model", rid)


@pytest.fixture
def tiny_data(hub, tmp_path):  # noqa: F811
    rid = f"hostile/data-{next(_ids)}"
    hub.add_repo("dataset", rid, _write_repo(tmp_path / "served" / "data", kind="dataset"))
    yield rid
    hub.remove_repo("dataset", rid)


# ---------------------------------------------------------------------------- the contract
def _forms(text: str) -> list[str]:
    """How an error may spell a hostile value: verbatim, as repr() or JSON shows it, or (long
    values) the start of those, as an error that shortens what it quotes would."""
    forms = [text, repr(text)[1:-1], json.dumps(text)[1:-1]]
    return forms + [f[:40] for f in forms if len(f) > 60]


def mentions(line: str, text: str) -> bool:
    return any(f and f in line for f in _forms(text))


def refused(site: Site, *args: str, names: tuple[str, ...] = (), endpoints: tuple[str, ...] = (),
            env: dict | None = None) -> Outcome:
    """Run ``hpcft stage ARGS`` and check the contract (module docstring); every broken part of it
    is reported at once, with the stage's stderr."""
    before = site.outside()
    out = site.stage(*args, env=env)
    problems = []
    if out.rc is None:
        problems.append(f"did not exit within {DEADLINE:.0f} s (killed)")
    elif out.rc == 0:
        problems.append("exited 0: the attack was not refused")
    elif out.seconds > DEADLINE:
        problems.append(f"took {out.seconds:.1f} s (> {DEADLINE:.0f} s)")
    line = out.error_line
    if out.rc not in (None, 0):
        if "Traceback" in out.stderr:
            problems.append("stderr holds a traceback")
        if not line.startswith("hpcft: error: "):
            problems.append(f"the last stderr line is not an 'hpcft: error:' line: {line[:300]!r}")
        if len(line) > MAX_ERROR:
            problems.append(f"the error line is {len(line)} characters long (> {MAX_ERROR})")
        for name in names:
            if not mentions(line, name):
                problems.append(f"the error line does not name {name!r}")
        for url in endpoints:
            if url not in line:
                problems.append(f"the error line does not name the endpoint {url}")
    changed = diff(before, site.outside())
    if changed:
        problems.append("changed outside the cache:\n    " + "\n    ".join(changed[:20]))
    left = site.cache_leftovers()
    if left:
        problems.append("left in the cache outside tmp/ and locks/:\n    " + "\n    ".join(left[:20]))
    assert not problems, (f"hpcft stage {' '.join(args)} (rc={out.rc}, {out.seconds:.1f} s):\n  - "
                          + "\n  - ".join(problems) + f"\n--- stderr (tail)\n{out.stderr[-3000:]}")
    return out


def model_args(rid: str, source: str) -> tuple[str, ...]:
    return ("--model", rid, "--source", source, "-q")


# ---------------------------------------------------------------------------- 1. file names
# Names a listing may carry; each ends in .json, so a model's selection keeps it. {ROOT} and
# {HOME} stand for the test's tmp folder and decoy home (filled in by _name).
NAMES = {
    "dotdot": "../../x.json",
    "absolute": "{ROOT}/abs/x.json",
    "inner-dotdot": "a/../../x.json",
    "nul": "a\x00.json",
    "backslash": "..\\x.json",
    "empty-part": "a//b.json",
    "dotdot-to-home": "{UP}{HOME}/x.json",
}
# a dataset's selection drops names that start with "." (hidden files): these it would keep
DATASET_NAMES = ("absolute", "inner-dotdot", "nul", "empty-part")


def _name(site: Site, key: str) -> str:
    return NAMES[key].format(ROOT=site.root, HOME=str(site.home).lstrip("/"), UP="../" * 40)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("key", list(NAMES))
def test_unsafe_file_name_in_a_model_listing(site, hub, tiny, source, key):  # noqa: F811
    name = _name(site, key)
    hub.hostile.extra_file(tiny, name)
    refused(site, *model_args(tiny, source), names=(name,), endpoints=(hub.url,))


@pytest.mark.parametrize("key", DATASET_NAMES)
def test_unsafe_file_name_in_a_modelscope_dataset_tree(site, hub, tiny_data, key):  # noqa: F811
    name = _name(site, key)
    hub.hostile.extra_file(tiny_data, name, b'{"text": "pwned", "label": 1}\n')
    refused(site, "--dataset", tiny_data, "--source", "modelscope", "--no-metric", "-q",
            names=(name,), endpoints=(hub.url,))


# ---------------------------------------------------------------------------- 2. commit ids
COMMITS = {"dotdot-in-hex": "111111111111/../../outside", "dotdot": "../../../../xxxx", "not-hex": "ZZZ",
           "dotdot-to-home": "{UP}{HOME}/pwned"}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("key", list(COMMITS))
def test_a_commit_id_that_is_not_40_hex(site, hub, tiny, source, key):  # noqa: F811
    """HF ``sha`` of the revision answer, ModelScope ``CommitId`` of /revisions and the listing,
    Modelers ``last_commit.commit.commit_sha``: the commit names a folder in the cache."""
    value = COMMITS[key].format(HOME=str(site.home).lstrip("/"), UP="../" * 40)
    hub.hostile.commit(tiny, value)
    refused(site, *model_args(tiny, source), names=(value,), endpoints=(hub.url,))


# ---------------------------------------------------------------------------- 3. listings that do not end
@pytest.mark.parametrize("source", SOURCES)
def test_an_endless_listing_is_cut_at_max_listing_mb(site, hub, tiny, source):  # noqa: F811
    site.config(max_listing_mb=1)
    hub.hostile.endless(tiny, seconds=DEADLINE + 5)
    refused(site, *model_args(tiny, source), names=(tiny,), endpoints=(hub.url,))
    assert hub.hostile.stream_hits(tiny) >= 1  # the attack was served (not a failure before it)


@pytest.mark.parametrize("source", SOURCES)
def test_a_dripping_listing_hits_the_timeout(site, hub, tiny, source):  # noqa: F811
    site.config(max_listing_mb=1)
    hub.hostile.drip(tiny, bytes_per_sec=1, seconds=DEADLINE + 5)
    out = refused(site, *model_args(tiny, source), names=(tiny,), endpoints=(hub.url,))
    assert hub.hostile.stream_hits(tiny) >= 1
    assert out.seconds < 3 + 8, f"timeout_s is 3; the stage took {out.seconds:.1f} s"


# ---------------------------------------------------------------------------- 4. redirects
@pytest.mark.parametrize("source", ["hf", "modelers"])
def test_a_redirect_elsewhere_never_carries_the_token(site, hub, tiny, source):  # noqa: F811
    """A download answered with a 302 to another port (a thief that answers 404): the token goes to
    the endpoint only, never along the redirect; the failed download is named."""
    token = f"secret-{source}-token-5e1f"
    with Recorder() as thief:
        hub.hostile.redirect(f"{tiny}/model.safetensors", f"{thief.url}/steal/model.safetensors")
        refused(site, *model_args(tiny, source), names=("model.safetensors",), endpoints=(hub.url,),
                env={TOKEN_VAR[source]: token})
        got = list(thief.requests)
    sent = [e for e in hub.log if e.repo_id == tiny]
    assert any(e.auth == f"Bearer {token}" for e in sent), "the token never reached the endpoint itself"
    assert got, "the redirect was not followed at all (nothing to check)"
    leaked = [r for r in got if r.get("Authorization") is not None or token in repr(r)]
    assert not leaked, f"the token followed the redirect: {leaked}"


@pytest.mark.parametrize("source", ["hf", "modelers"])
def test_a_redirect_to_a_cdn_works_without_the_token(site, hub, tiny, source):  # noqa: F811
    """The honest version (huggingface.co sends LFS files to a CDN, ModelScope to OSS): the
    far end serves the true bytes, the stage succeeds, the token stays home."""
    token = f"secret-{source}-token-77aa"
    data = hub.repos[("model", tiny)].default.read("model.safetensors")
    with Recorder(status=200, body=data, content_type="application/octet-stream") as cdn:
        hub.hostile.redirect(f"{tiny}/model.safetensors", f"{cdn.url}/lfs/model.safetensors")
        out = site.stage(*model_args(tiny, source), env={TOKEN_VAR[source]: token})
        got = list(cdn.requests)
    assert out.rc == 0, out.stderr[-3000:]
    assert got and not [r for r in got if r.get("Authorization") is not None or token in repr(r)]
    assert list((site.cache / "manifests" / "model").glob("*.json"))


@pytest.mark.parametrize("source", SOURCES)
def test_a_redirect_to_ftp_is_refused(site, hub, tiny, source):  # noqa: F811
    hub.hostile.redirect(f"{tiny}/model.safetensors", "ftp://127.0.0.1/x")
    refused(site, *model_args(tiny, source), names=("model.safetensors",), endpoints=(hub.url,))


# ---------------------------------------------------------------------------- 5. no hashes
@pytest.mark.parametrize("source", SOURCES)
def test_a_listing_without_hashes_is_refused(site, hub, tiny, source):  # noqa: F811
    hub.hostile.no_hashes(tiny, "model.safetensors")
    out = refused(site, *model_args(tiny, source), names=("model.safetensors",), endpoints=(hub.url,))
    assert "hash" in out.error_line.lower(), out.error_line


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_allow_unverified_stages_and_records_the_paths(site, hub, tiny, source):  # noqa: F811
    hub.hostile.no_hashes(tiny)  # every file
    out = site.stage(*model_args(tiny, source), "--allow-unverified")
    assert out.rc == 0, out.stderr[-3000:]
    manifest = json.loads((site.cache / "manifests" / "model" / f"{tiny.replace('/', '--')}.json").read_text())
    assert set(manifest.get("unverified") or ()) == MODEL_FILES, manifest.get("unverified")
    assert {f["path"] for f in manifest["files"]} == MODEL_FILES


# ---------------------------------------------------------------------------- 6. wrong bytes
@pytest.mark.parametrize("source", SOURCES)
def test_wrong_bytes_with_right_headers(site, hub, tiny, source):  # noqa: F811
    hub.faults.corrupt(f"{tiny}/model.safetensors")
    refused(site, *model_args(tiny, source), names=("model.safetensors",), endpoints=(hub.url,))
    assert hub.log.fetched_files(tiny) >= {"model.safetensors"}  # it was served, and refused


# ---------------------------------------------------------------------------- 7. a file that never ends
@pytest.mark.parametrize("source", SOURCES)
def test_a_download_at_one_byte_per_second_is_aborted(site, hub, tiny, source):  # noqa: F811
    """64 KiB at >= 64 kB/s after timeout_s 3: the download's deadline is about 4 s."""
    site.config(min_speed_kbs=64)
    hub.faults.slow(f"{tiny}/model.safetensors", bytes_per_sec=1)
    out = refused(site, *model_args(tiny, source), names=("model.safetensors",), endpoints=(hub.url,))
    assert out.seconds < 3 + 1 + 8, f"the download's deadline is about 4 s; the stage took {out.seconds:.1f} s"


# ---------------------------------------------------------------------------- cross-check
@pytest.fixture
def poisoned(tmp_path):
    """A second hub, for the poisoned copy of a repo (its listing's hashes match the poison)."""
    with HubServer() as other:
        yield other


@pytest.mark.parametrize("path", ["model.safetensors", "config.json"])  # listed sha256 / git blob id on HF
def test_cross_check_catches_a_poisoned_mirror(site, hub, tiny, poisoned, path, tmp_path):  # noqa: F811
    """hf (first in sources.order) serves a poisoned file with its own matching hash, modelscope the
    true one: the poison passes its own check, --cross-check refuses it naming the file and both."""
    honest = hub.repos[("model", tiny)].default.folder
    evil = {"model.safetensors": {"weights": _weights(b"poison")},
            "config.json": {"config": b'{"model_type": "bert", "hidden_size": 32, "auto_map": "evil"}\n'}}[path]
    poisoned.add_repo("model", tiny, _write_repo(tmp_path / "served" / "poisoned", **evil))
    assert (honest / path).read_bytes() != poisoned.repos[("model", tiny)].default.read(path)
    site.point("hf", poisoned.url)
    site.point("modelscope", hub.url)
    site.config(order=["hf", "modelscope"])
    out = refused(site, "--model", tiny, "--cross-check", "-q", names=(path,), endpoints=(poisoned.url, hub.url))
    line = out.error_line
    assert re.search(r"\bhf\b", line) and re.search(r"\bmodelscope\b", line), line
    # the premise: without --cross-check the poison passes its own hash and is staged from hf
    alone = site.stage("--model", tiny, "-q", "--cache", str(tmp_path / "other-cache"))
    assert alone.rc == 0, alone.stderr[-2000:]


# ---------------------------------------------------------------------------- the harness itself
def test_the_snapshot_sees_what_an_attack_could_do(tmp_path):
    """fssnap: contents, modes, new and removed entries, link targets; links are not followed."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("a")
    (tmp_path / "link").symlink_to(tmp_path / "d")
    (tmp_path / "skip").mkdir()
    before = snapshot(tmp_path, exclude=[tmp_path / "skip"])
    assert before["link"][0] == "link" and "link/f" not in before
    assert not diff(before, snapshot(tmp_path, exclude=[tmp_path / "skip"]))
    (tmp_path / "skip" / "anything").write_text("ignored")
    (tmp_path / "d" / "f").write_text("b")
    (tmp_path / "d").chmod(0o700)
    (tmp_path / "new").write_text("")
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("/etc")
    lines = diff(before, snapshot(tmp_path, exclude=[tmp_path / "skip"]))
    assert [line.split(":")[0] for line in lines] == ["~ d", "~ d/f", "~ link", "+ new"], lines
    assert "-> /etc" in lines[2]


def _get(url: str) -> tuple[int, bytes]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def test_hostile_mode_serves_its_lies_on_every_protocol(hub, tiny):  # noqa: F811
    """The hub side alone (no hpcft): each lie appears where each protocol carries it."""
    real = hub.repos[("model", tiny)].default.sha
    hub.hostile.extra_file(tiny, "../../x.json")
    hub.hostile.commit(tiny, "ZZZ")
    hub.hostile.no_hashes(tiny, "config.json")
    info = json.loads(_get(f"{hub.url}/api/models/{tiny}/revision/main")[1])
    assert info["sha"] == "ZZZ"
    tree = {e["path"]: e for e in json.loads(_get(f"{hub.url}/api/models/{tiny}/tree/ZZZ?recursive=true")[1])}
    assert "oid" in tree["../../x.json"] and "oid" not in tree["config.json"] and "lfs" in tree["model.safetensors"]
    assert _get(f"{hub.url}/{tiny}/resolve/ZZZ/../../x.json") == (200, b'{"pwned": true}\n')
    ms = json.loads(_get(f"{hub.url}/api/v1/models/{tiny}/repo/files?Revision=master&Recursive=True")[1])
    files = {f["Path"]: f for f in ms["Data"]["Files"]}
    assert files["../../x.json"]["Sha256"] and "Sha256" not in files["config.json"]
    revs = json.loads(_get(f"{hub.url}/api/v1/models/{tiny}/revisions")[1])
    assert {b["CommitId"] for b in revs["Data"]["RevisionMap"]["Branches"]} == {"ZZZ"}
    om = json.loads(_get(f"{hub.url}/api/v1/file/{tiny}?ref=main&path=")[1])["data"]
    assert om["last_commit"]["commit"]["commit_sha"] == "ZZZ"
    assert {e["path"] for e in om["tree"]} >= {"../../x.json", "config.json"}
    assert "etag" not in next(e for e in om["tree"] if e["path"] == "config.json")
    assert any("/tree/ZZZ?" in e.path for e in hub.log)  # the log shows what the client sent
    hub.reset()
    hub.hostile.endless(tiny, seconds=0.5)
    t0 = time.monotonic()
    status, body = _get(f"{hub.url}/api/models/{tiny}/tree/{real}?recursive=true")
    assert status == 200 and body.startswith(b'[{"type":"file"') and len(body) > 100_000
    assert time.monotonic() - t0 < 5 and hub.hostile.stream_hits(tiny) == 1
