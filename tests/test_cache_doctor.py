"""hpcft cache doctor and the pieces of the shared-cache defence that one user can test alone:
the name validator, descriptor-only file operations, the trust check, a cache made by an older
hpcft (2775, no sticky bit). Two real users attacking each other: tests/test_shared_cache.py;
a hostile mirror: tests/test_stage_hostile.py."""

from __future__ import annotations

import grp
import json
import os
import stat
from pathlib import Path

import pytest

from hpcft.core import names
from hpcft.core.errors import StageError
from hpcft.core.safefs import Dir, Lock, Modes, Planted
from hpcft.core.store import Cache
from hpcft.offline_shim import hpcft_trust
from hpcft.stage.layout import prepare_cache, register_local

from .conftest import hpcft


def _model(tmp_path: Path) -> Path:
    folder = tmp_path / "model-src"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    return folder


def _group_config(home: Path) -> None:
    cfg = Path(os.environ["XDG_CONFIG_HOME"]) / "hpcft" / "config.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f"cache_group: {grp.getgrgid(os.getgid()).gr_name}\n")


# ------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../../x", "a//b", "a\x00b", "..\\x", "./a", "", "a/", "\n",
                                 "x" * 300, "a/" * 600])
def test_unsafe_listing_names_are_refused(bad):
    with pytest.raises(names.UnsafeName, match="unsafe file name"):
        names.rel_path(bad, "model org/x file list")


@pytest.mark.parametrize("good", ["config.json", "mrpc/train-00000-of-00001.parquet", "a.b/c-d_e.json", "ü.txt"])
def test_safe_listing_names_pass(good):
    assert names.rel_path(good, "x") == good


@pytest.mark.parametrize("bad", ["111111111111/../../outside", "../../../../xxxx", "ZZZ", "A" * 40, "a" * 39, None])
def test_commit_ids_must_be_40_hex(bad):
    with pytest.raises(names.UnsafeName, match="not 40 hex"):
        names.commit(bad, "hf (http://m)", "model org/x")


@pytest.mark.parametrize("bad", ["../x", "a/b/c", "org/..", "org/a--b", "-org/x", "org/x.", "org/x\x00", "a b/c"])
def test_repo_ids_users_type_are_checked(bad):
    with pytest.raises(names.UnsafeName):
        names.repo_id(bad, "model")


@pytest.mark.parametrize("bad", ["../main", "a..b", "ref\x00", "-x", "a b", "x.lock"])
def test_revisions_are_git_refnames(bad):
    with pytest.raises(names.UnsafeName):
        names.revision(bad, "--revision")


def test_stage_cli_refuses_a_traversal_revision_and_config(run_hpcft):
    for args in (["bert-base-uncased", "--revision", "../../../x"], ["--dataset", "glue:../../x"],
                 ["--dataset", "org/name:a..b"]):
        proc = run_hpcft("stage", *args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr
    assert not (Path(os.environ["HPCFT_CACHE"]) / "manifests").exists() or \
        not any((Path(os.environ["HPCFT_CACHE"]) / "manifests").rglob("*.json"))


# ------------------------------------------------------------------------------------- safefs
def test_a_planted_link_is_never_followed(tmp_path):
    root = tmp_path / "cache"
    victim = tmp_path / "home"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    root.mkdir()
    (root / "hf").symlink_to(victim)
    with Dir.open_root(root) as d:
        with pytest.raises(Planted, match="symbolic link"):
            d.sub("hf/hub", create=True, modes=Modes())
        (root / "locks").mkdir()
        (root / "locks" / "x.lock").symlink_to(victim / "keep.txt")
        with d.sub("locks") as locks, pytest.raises(Planted, match="lock file is a symbolic link"):
            Lock(locks, "x.lock").__enter__()
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"] and (victim / "keep.txt").read_text() == "mine"


def test_write_atomic_replaces_a_link_and_never_writes_through_it(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("untouched")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "refs").symlink_to(target)
    with Dir.open_root(folder) as d:
        d.write_atomic("refs", b"abc", Modes())
    assert target.read_text() == "untouched" and (folder / "refs").read_text() == "abc"
    assert not (folder / "refs").is_symlink()


# ------------------------------------------------------------------------------------- trust
def test_a_manifest_pointing_outside_or_at_a_link_is_not_trusted(tmp_path):
    cache = Cache(tmp_path / "cache")
    asset = register_local(cache, "model", "org/m", _model(tmp_path))
    mpath = cache.manifest_path("model", "org/m")
    data = json.loads(mpath.read_text())
    assert hpcft_trust.problem(str(cache.root), str(mpath), data) == ""
    outside = dict(data, path=str(tmp_path / "model-src"))
    assert "outside the cache" in hpcft_trust.problem(str(cache.root), str(mpath), outside)
    link = cache.root / "hf" / "hub" / "models--org--evil"
    link.symlink_to(asset.path.parent.parent)
    behind = dict(data, path=str(link / "snapshots" / asset.path.name))
    assert "behind a link" in hpcft_trust.problem(str(cache.root), str(mpath), behind)
    unsafe = dict(data, files=[{"path": "../../x", "size": 1, "sha256": "0" * 64}])
    assert "unsafe file name" in hpcft_trust.problem(str(cache.root), str(mpath), unsafe)
    os.chmod(mpath, 0o666)
    assert "writable by other users" in hpcft_trust.problem(str(cache.root), str(mpath), data)
    assert cache.find("model", "org/m") is None  # lookups ignore what fails the check


# ------------------------------------------------------------------------------------- doctor
def test_doctor_reports_and_fixes_an_old_style_cache(hpcft_home, tmp_path):
    _group_config(hpcft_home)
    cache = Cache(Path(os.environ["HPCFT_CACHE"]))
    modes = Modes(os.getgid())
    register_local(cache, "model", "org/m", _model(tmp_path), modes=modes)
    snap = cache.find("model", "org/m").path
    ok = hpcft("cache", "doctor")
    assert ok.returncode == 0 and "every manifest trusted" in ok.stdout, ok.stderr
    # as an older hpcft left it: 2775 folders, a group-writable file; plus a foreign link and a forged manifest
    os.chmod(cache.root / "manifests" / "model", 0o2775)
    os.chmod(snap, 0o2775)
    os.chmod(snap / "config.json", 0o664)
    (cache.root / "hf" / "hub" / "models--evil").symlink_to(tmp_path)
    forged = cache.root / "manifests" / "model" / "org--forged.json"
    forged.write_text(json.dumps({"kind": "model", "repo_id": "org/forged", "path": str(tmp_path), "files": []}))
    bad = hpcft("cache", "doctor")
    assert bad.returncode == 1, bad.stdout
    for want in ("without the sticky bit", "staged asset's folder that other users can write to",
                 "a file other users can write to", "a symbolic link to", "not trusted"):
        assert want in bad.stderr, (want, bad.stderr)
    fixed = hpcft("cache", "doctor", "--fix")
    assert fixed.returncode == 1  # the link and the forged manifest need a person
    assert stat.S_IMODE(os.stat(cache.root / "manifests" / "model").st_mode) == 0o3775
    assert stat.S_IMODE(os.stat(snap).st_mode) == 0o2755
    assert stat.S_IMODE(os.stat(snap / "config.json").st_mode) == 0o644
    (cache.root / "hf" / "hub" / "models--evil").unlink()
    forged.unlink()
    again = hpcft("cache", "doctor", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["ok"] is True


def test_verify_lists_untrusted_manifests(hpcft_home, tmp_path):
    cache = Cache(Path(os.environ["HPCFT_CACHE"]))
    register_local(cache, "model", "org/m", _model(tmp_path))
    forged = cache.root / "manifests" / "model" / "org--forged.json"
    forged.write_text(json.dumps({"kind": "model", "repo_id": "org/forged", "sha": "x", "path": "/etc", "files": []}))
    proc = hpcft("cache", "verify")
    assert proc.returncode == 1 and "not trusted, ignored" in proc.stderr and "outside the cache" in proc.stderr
    rm = hpcft("cache", "rm", "org/forged")
    assert rm.returncode != 0 and os.path.isdir("/etc")


def test_a_foreign_non_sticky_shared_folder_is_refused(tmp_path):
    """A group-writable folder without the sticky bit that is not ours: the stage stops and says
    whom to ask (we can fix only our own)."""
    cache = Cache(tmp_path / "cache")
    prepare_cache(cache, Modes())
    tmp = cache.root / "tmp"
    os.chmod(tmp, 0o777)
    os.chown(tmp, 65534, -1)  # nobody's (tests run as root in CI)
    with Dir.open_root(cache.root) as d, pytest.raises(StageError, match="not sticky"):
        d.sub("tmp").close()
    os.chown(tmp, os.getuid(), -1)
    with Dir.open_root(cache.root) as d:  # ours: the bit is added
        d.sub("tmp").close()
    assert os.stat(tmp).st_mode & stat.S_ISVTX


def test_doctor_prints_staged_code_to_pin_and_moves_old_runtime_caches(hpcft_home, tmp_path):
    """An admin pins what the doctor prints (trusted_code:); what an older hpcft's jobs left in the
    cache's shared run-time folders is reported, and --fix moves the caller's own to their runtime."""
    import hashlib

    cache = Cache(Path(os.environ["HPCFT_CACHE"]))
    src = tmp_path / "mymetric"
    src.mkdir()
    (src / "mymetric.py").write_text("import evaluate\n")
    register_local(cache, "metric", "org/mymetric", src)
    digest = hashlib.sha256(b"import evaluate\n").hexdigest()
    old = cache.root / "hf" / "modules" / "evaluate_modules"
    old.mkdir(parents=True)
    (old / "glue.py").write_text("print('old')\n")
    first = hpcft("cache", "doctor")
    assert first.returncode == 1, first.stderr
    assert f"metric org/mymetric: {src.name}" not in first.stdout  # the staged copy, not the source
    assert digest in first.stdout and "trusted_code:\n  org/mymetric:\n    - " + digest in first.stdout
    assert "hf/modules/evaluate_modules: left in hf/modules" in first.stderr
    fixed = hpcft("cache", "doctor", "--fix")
    moved = hpcft_home / "runtime" / "moved-from-cache" / "hf" / "modules" / "evaluate_modules" / "glue.py"
    assert moved.is_file() and not old.exists(), fixed.stdout + fixed.stderr
    assert stat.S_IMODE((hpcft_home / "runtime").stat().st_mode) == 0o700
