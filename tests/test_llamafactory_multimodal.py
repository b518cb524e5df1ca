"""Multimodal LLaMA-Factory datasets (issue 27, item 2's media and the Qwen2-VL test).

End to end on the dev Slurm, with LLaMA-Factory 0.9.5 (.venv-lf) as the job's env: a tiny Qwen2-VL
and an image-text sharegpt dataset (``images`` column, ``<image>`` in the prompt) are served by the
loopback hub; ``hpcft stage --job`` stages the model and the dataset with exactly the images its rows
name (not the repo's unused one); the hub is stopped; ``hpcft submit`` delegates the job
(multimodal: ``engine: auto`` hands it to LLaMA-Factory), a LoRA SFT of a few steps runs, the
resolved YAML's ``media_dir`` is the staged folder and metrics.json has a loss.

Bad input, in-process (no Slurm): each one line, exit 2, nothing staged: a missing image, an
absolute path outside the dataset, a ``..`` escape, a symlink leaving the folder, a URL, too many
images in a row (local rows); a row naming a file the hub repo lacks, and a URL (hub rows).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from devtools.hub.server import HubServer
from devtools.hub.vl_fixtures import VL_DATA_ID, VL_ID, VL_INFO, make_vl_fixtures, vl_rows, write_images
from hpcft.core.store import Cache

ROOT = Path(__file__).resolve().parent.parent
LF_VENV = Path(os.environ.get("HPCFT_LF_VENV", ROOT / ".venv-lf"))
DEAD = "http://127.0.0.1:9"
USED = {"images/red.png", "images/green.png", "images/blue.png", "images/yellow.png"}
LF_YAML = f"""\
model_name_or_path: {VL_ID}
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
dataset: colors
dataset_dir: data
template: qwen2_vl
cutoff_len: 256
overwrite_cache: true
output_dir: saves/qwen2-vl/lora
logging_steps: 1
save_steps: 100
report_to: none
per_device_train_batch_size: 2
learning_rate: 1.0e-3
max_steps: 4
"""


def _lf_venv() -> Path:
    if not (LF_VENV / "bin" / "llamafactory-cli").is_file():
        msg = f"no LLaMA-Factory lane ({LF_VENV}): HPCFT_LF=1 scripts/setup builds it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI=true: the LF lane is required)")
        pytest.skip(msg)
    return LF_VENV


@pytest.fixture(scope="module")
def vl_repos(tmp_path_factory):
    return make_vl_fixtures(tmp_path_factory.mktemp("vl-fixtures"), python=str(_lf_venv() / "bin" / "python"))


def _job(folder: Path, info: dict, lf_text: str = LF_YAML) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "dataset_info.json").write_text(json.dumps(info))
    (folder / "lf.yaml").write_text(lf_text)
    spec = {"name": "lf-vl", "executor": "slurm", "llamafactory": "lf.yaml",
            "resources": {"time": "00:10:00"},
            "env": {"venv": str(LF_VENV), "vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD}}}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _hub(vl_repos: dict) -> HubServer:
    hub = HubServer()
    for (kind, rid), folder in vl_repos.items():
        hub.add_repo(kind, rid, folder)
    return hub


def _sources(config: Path, hub: HubServer) -> None:
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({"sources": {"order": ["hf"], "hf_endpoint": hub.url, "retries": 0}}))


# --------------------------------------------------------------------------- end to end on Slurm

@pytest.fixture(scope="module")
def trained(vl_repos, slurm_conf, tmp_path_factory):
    """stage --job from the hub, the hub stopped, then the one delegated run."""
    from tests.conftest import hpcft
    from tests.test_preference_slurm import _wait

    root = tmp_path_factory.mktemp("lf-vl")
    home = root / "home"
    env = {"HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"), "HPCFT_CONFIG": str(home / "config.yaml"),
           "XDG_CONFIG_HOME": str(home / "xdg"), "SLURM_CONF": slurm_conf}
    job = _job(root / "job", {"colors": {"hf_hub_url": VL_DATA_ID, **VL_INFO}})

    def run(*args, **kw):
        return hpcft(*args, env=env, **kw)

    with _hub(vl_repos) as hub:
        _sources(home / "config.yaml", hub)
        staged = run("stage", "--job", str(job), "--json", check=True)
        fetched = {rid: hub.log.fetched_files(rid) for _, rid in vl_repos}
    sub = json.loads(run("submit", str(job), "--json", check=True).stdout)
    metrics = _wait(run, sub, timeout=300)
    return {"stage": json.loads(staged.stdout), "fetched": fetched, "sub": sub, "metrics": metrics,
            "run_dir": Path(sub["run_dir"]), "home": home}


@pytest.mark.slurm
@pytest.mark.hub
def test_stage_job_fetches_the_images_the_rows_name_and_no_others(trained):
    fetched = trained["fetched"][VL_DATA_ID]
    assert fetched == {"README.md", "train.json", *USED}, fetched   # not images/unused.png
    asset = next(a for a in trained["stage"]["assets"] if a["kind"] == "dataset")
    staged = {str(p.relative_to(asset["path"])) for p in Path(asset["path"]).rglob("*.png")}
    assert staged == USED and {s["path"] for s in asset["skipped"]} == {"images/unused.png"}, asset
    manifest = Cache(trained["home"] / "cache").find("dataset", VL_DATA_ID, None).manifest
    assert manifest["lf_media"] == ["images:images"]
    assert "model.safetensors" in trained["fetched"][VL_ID]


@pytest.mark.slurm
@pytest.mark.hub
def test_a_qwen2_vl_lora_sft_runs_delegated_on_the_staged_images(trained):
    run_dir, m = trained["run_dir"], trained["metrics"]
    assert m["completed"] and m["engine"] == "llamafactory" and m["train"]["global_step"] == 4, m
    assert isinstance(m["eval"]["train_loss"], float) and m["headline"] == "train_loss", m
    lf = yaml.safe_load((run_dir / "llamafactory" / "train.yaml").read_text())
    info = json.loads((run_dir / "llamafactory" / "data" / "dataset_info.json").read_text())
    asset = next(a for a in trained["stage"]["assets"] if a["kind"] == "dataset")
    assert info["colors"]["script_url"] == lf["media_dir"] == asset["path"] and lf["template"] == "qwen2_vl"
    log = (run_dir / f"job.{trained['sub']['job_id']}.out").read_text()
    # the images reached the model: each 56x56 image is 4 merged patches between the vision tokens
    assert "<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>" in log, log[-3000:]
    assert "does not exist in `media_dir`" not in log and (run_dir / "output" / "adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------- bad input, in-process

def _stage_job(job: Path, capsys) -> tuple[int, list[str]]:
    from hpcft.cli.main import main

    capsys.readouterr()
    code = main(["stage", "--job", str(job), "-q"])
    return code, capsys.readouterr().err.strip().splitlines()


LOCAL_CASES = {
    "missing": ("images/missing.png", "not found"),
    "absolute": ("/etc/hostname", "an absolute path outside the dataset's media_dir {data}; name it relative to "
                                  "media_dir (and put it there)"),
    "dotdot": ("images/../../secret.png", "'..' leads outside {data}"),
    "symlink": ("images/link.png", "a symlink leading outside the dataset's media_dir {data} (to {secret}); copy "
                                   "the file there"),
    "url": ("https://example.com/cat.png", "a URL; compute nodes are offline, so LLaMA-Factory cannot fetch it "
                                           "there: download it beside the dataset, name it by a path relative to "
                                           "media_dir, and stage again"),
    "huge": (["images/red.png"] * 300, "300 images in one row; hpcft stages at most 256 per row"),
}


@pytest.mark.parametrize("case", sorted(LOCAL_CASES))
def test_bad_media_in_local_rows_one_line_exit_2_nothing_staged(case, hpcft_home, tmp_path, capsys):
    job = _job(tmp_path, {"colors": {"file_name": "rows.json", **VL_INFO}})
    data = tmp_path / "data"
    write_images(data / "images", unused=False)
    secret = tmp_path / "secret.png"
    shutil.copy(data / "images" / "red.png", secret)
    (data / "images" / "link.png").symlink_to(secret)
    rows = vl_rows(4)
    value, why = LOCAL_CASES[case]
    rows[2]["images"] = value if isinstance(value, list) else [value]
    (data / "rows.json").write_text(json.dumps(rows))
    code, lines = _stage_job(job, capsys)
    why = why.format(data=data, secret=secret)
    want = f"dataset colors: row 3: {why}" if case == "huge" else f"dataset colors: row 3: image {value}: {why}"
    assert (code, lines) == (2, [want])
    assert not list((hpcft_home / "cache").rglob("manifests/*/*.json"))   # checked before anything is staged


def test_local_rows_whose_images_exist_pass_the_check(hpcft_home, tmp_path):
    from hpcft.core.config import load_settings
    from hpcft.core.job_load import load_job
    from hpcft.stage.lf_media import plan

    job = _job(tmp_path, {"colors": {"file_name": "rows.json", **VL_INFO}})
    write_images(tmp_path / "data" / "images")
    (tmp_path / "data" / "rows.json").write_text(json.dumps(vl_rows(8)))
    loaded = load_job(str(job), load_settings(), {})
    got = plan(loaded.job.train.llamafactory, loaded.base_dir)
    assert got.local == {"colors": 4} and got.hub == {}
    assert loaded.job.train.task == "llamafactory"   # multimodal: delegated by engine: auto


@pytest.mark.hub
@pytest.mark.parametrize("case", ["missing", "url"])
def test_bad_media_in_hub_rows_one_line_exit_2_nothing_installed(case, vl_repos, hpcft_home, tmp_path, capsys):
    served = tmp_path / "served"
    shutil.copytree(vl_repos[("dataset", VL_DATA_ID)], served)
    rows = vl_rows(4)
    rows[1]["images"] = ["images/absent.png"] if case == "missing" else ["http://example.com/x.png"]
    (served / "train.json").write_text(json.dumps(rows))
    job = _job(tmp_path / "job", {"colors": {"hf_hub_url": VL_DATA_ID, **VL_INFO}},
               LF_YAML.replace(VL_ID, str(vl_repos[("model", VL_ID)])))   # a local model: only the dataset is fetched
    with HubServer() as hub:
        repo = hub.add_repo("dataset", VL_DATA_ID, served)
        _sources(Path(os.environ["HPCFT_CONFIG"]), hub)
        code, lines = _stage_job(job, capsys)
        fetched = hub.log.fetched_files(VL_DATA_ID)
    label = f"{VL_DATA_ID}@{repo.default.sha[:12]}"
    why = f"not found in {label}" if case == "missing" else (
        "a URL; compute nodes are offline, so LLaMA-Factory cannot fetch it there: download it beside the dataset, "
        "name it by a path relative to media_dir, and stage again")
    path = rows[1]["images"][0]
    assert (code, lines) == (2, [f"dataset colors: row 2: image {path}: {why}"])
    assert fetched <= {"README.md", "train.json"}   # the rows were read; no image was fetched
    assert Cache(hpcft_home / "cache").find("dataset", VL_DATA_ID, None) is None


@pytest.mark.hub
def test_a_dataset_staged_without_its_media_gets_them_from_stage_job(vl_repos, hpcft_home, tmp_path, capsys):
    from hpcft.cli.main import main

    job = _job(tmp_path / "job", {"colors": {"hf_hub_url": VL_DATA_ID, **VL_INFO}},
               LF_YAML.replace(VL_ID, str(vl_repos[("model", VL_ID)])))
    with _hub({("dataset", VL_DATA_ID): vl_repos[("dataset", VL_DATA_ID)]}) as hub:
        _sources(Path(os.environ["HPCFT_CONFIG"]), hub)
        assert main(["stage", "--dataset", VL_DATA_ID, "-q"]) == 0   # plain staging: the data files only
        assert hub.log.fetched_files(VL_DATA_ID) == {"README.md", "train.json"}
        hub.log.clear()
        code, lines = _stage_job(job, capsys)
        again = hub.log.fetched_files(VL_DATA_ID)
        hub.log.clear()
        assert _stage_job(job, capsys)[0] == 0 and hub.log.fetched_files(VL_DATA_ID) == set()   # now cached
    assert (code, again) == (0, {"train.json", *USED} | (again & {"README.md"})), lines
    asset = Cache(hpcft_home / "cache").find("dataset", VL_DATA_ID, None)
    assert {f["path"] for f in asset.manifest["files"]} >= USED and (asset.path / "images" / "red.png").is_file()
