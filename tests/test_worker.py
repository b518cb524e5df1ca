"""Worker unit tests: asset resolution and fail-fast, data checks, metrics, checkpoints, show.

Fast: no training here (see test_train.py and test_train_slurm.py).
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from devtools.runs import make_run, tiny_job
from hpcft.core import assets
from hpcft.core.config import load_settings
from hpcft.core.errors import NotStagedError
from hpcft.core.job import Job
from hpcft.core.job_load import load_job
from hpcft.core.resolve import load_table
from hpcft.core.store import Cache
from hpcft.stage.layout import register_local
from hpcft.worker import checkpoints as ck
from hpcft.worker.callback import _CallbackMixin
from hpcft.worker.engines.native import metrics as mt
from hpcft.worker.engines.native.presets import preset_for
from hpcft.worker.errors import NaNLossError
from hpcft.worker.progress import ProgressWriter

pytestmark = pytest.mark.worker  # also run on the floor lane (.venv-floor)

ROOT = Path(__file__).resolve().parent.parent


def train_assets(cache, base_dir=None, **train):
    """The lookup the worker and the submit check share, for a train: spec."""
    job = Job.model_validate({"name": "t", "train": {"metric": None, **train}})
    return assets.job_assets(job, cache, load_table(None), base_dir)


def _fake_model(tmp: Path, name: str) -> Path:
    d = tmp / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    return d


@pytest.fixture
def cache(hpcft_home, tmp_path) -> Cache:
    c = Cache(hpcft_home / "cache")
    register_local(c, "model", "google-bert/bert-base-uncased", _fake_model(tmp_path, "m"),
                   aliases=["bert-base-uncased"])
    ds = tmp_path / "glue"
    (ds / "mrpc").mkdir(parents=True)
    (ds / "README.md").write_text("---\nconfigs: []\n---\n")
    register_local(c, "dataset", "nyu-mll/glue", ds, config="mrpc", aliases=["glue"])
    met = tmp_path / "glue-metric"
    met.mkdir()
    (met / "glue.py").write_text("# metric\n")
    (met / "app.py").write_text("# gradio\n")
    register_local(c, "metric", "evaluate-metric/glue", met, aliases=["glue"])
    return c


def test_presets_cover_glue_and_tutorial_datasets():
    assert preset_for("glue", "mrpc").text_columns == ("sentence1", "sentence2")
    assert preset_for("nyu-mll/glue", "cola").headline == "matthews_correlation"
    stsb = preset_for("glue", "stsb")
    assert stsb.regression and stsb.num_labels == 1
    for cfg in ("sst2", "qnli", "rte", "mnli", "qqp"):
        assert preset_for("glue", cfg) is not None
    assert preset_for("Yelp/yelp_review_full", None).num_labels == 5
    assert preset_for("my-org/custom", None) is None


@pytest.mark.parametrize("model,dataset,config", [
    ("bert-base-uncased", "glue/mrpc", None),
    ("google-bert/bert-base-uncased", "glue", "mrpc"),
    ("bert-base-uncased", "nyu-mll/glue:mrpc", None),
])
def test_typed_names_find_staged_assets(cache, model, dataset, config):
    refs = train_assets(cache, model=model, dataset=dataset, dataset_config=config, metric="glue")
    assert all(r.found for r in refs), refs
    m, d, met = refs
    assert d.config == "mrpc" and d.repo_id == "nyu-mll/glue"
    assert met.path.name == "glue.py"  # evaluate.load takes the module file


def test_missing_assets_name_the_exact_stage_command(cache):
    refs = train_assets(cache, model="bert-large-uncased", dataset="glue/rte", metric="glue")
    with pytest.raises(NotStagedError) as exc:
        assets.require(refs, load_table(None))
    text = str(exc.value)
    assert "model bert-large-uncased" in text and "dataset glue/rte" in text
    assert "hpcft stage bert-large-uncased glue/rte" in text


def test_local_csv_resolves_against_the_job_folder(cache, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("text,target\nhi,a\n")
    refs = train_assets(cache, tmp_path, model="bert-base-uncased", dataset="data/x.csv")
    assert refs[1].kind == "file" and refs[1].path == (tmp_path / "data" / "x.csv").resolve()
    with pytest.raises(NotStagedError, match="data file not found: data/missing.csv"):
        assets.require(train_assets(cache, tmp_path, model="bert-base-uncased", dataset="data/missing.csv"),
                       load_table(None))


def test_script_env_points_scripts_at_the_staged_copies(cache):
    job = Job.model_validate({"name": "s", "script": "run.py", "assets": {
        "models": ["bert-base-uncased"], "datasets": ["glue/mrpc"], "metrics": ["glue"]}})
    env = assets.script_env(assets.job_assets(job, cache, load_table(load_settings())))
    assert env["HPCFT_MODEL_PATH"].endswith("/snapshots/" + Path(env["HPCFT_MODEL_PATH"]).name)
    assert Path(env["HPCFT_DATASET_PATH"]).is_dir() and env["HPCFT_DATASET_CONFIG"] == "mrpc"
    assert env["HPCFT_METRIC_PATH"].endswith("glue.py")
    assert set(json.loads(env["HPCFT_ASSETS"])) == {"bert-base-uncased", "glue/mrpc", "glue"}


def test_worker_fails_fast_without_importing_torch(cache, tmp_path):
    """A job whose model is not staged fails in seconds, before torch/transformers are imported."""
    paths = make_run(tiny_job(model="bert-large-cased"))
    code = ("import sys\nfrom hpcft.worker import main\nfrom hpcft.core.errors import NotStagedError\n"
            f"try:\n    main.run({str(paths.dir)!r})\nexcept NotStagedError as e:\n"
            "    print('HEAVY', sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert "hpcft: error: on the login node run: hpcft stage bert-large-cased" in proc.stderr
    last = json.loads(paths.progress.read_text().splitlines()[-1])
    assert last["event"] == "failed" and "hpcft stage" in last["error"]


def test_launch_and_light_worker_modules_never_import_torch():
    code = ("import sys, hpcft.entry, hpcft.worker.main, hpcft.worker.runtime, hpcft.core.assets, hpcft.worker.engines.native.presets, "
            "hpcft.worker.checkpoints, hpcft.cli.cmd_show\nprint(sorted(m for m in ('torch','transformers','datasets','evaluate') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_columns_list_the_columns_the_dataset_has(tmp_path):
    from hpcft.core.assets import JobAsset
    from hpcft.worker.data.staged import DataError, prepare

    csv = tmp_path / "reviews.csv"
    csv.write_text("id,review,stars\n1,great,5\n2,bad,1\n")
    train = Job.model_validate({"name": "x", "train": {"model": "m", "dataset": str(csv),
                                                        "text_columns": ["text"], "label_column": "target"}}).train
    with pytest.raises(DataError) as exc:
        prepare(train, JobAsset("file", str(csv), path=csv), None, tokenizer=None)
    assert "no column 'text', 'target'" in str(exc.value)
    assert "it has: id, review, stars" in str(exc.value)


def test_builtin_metrics_match_their_definitions():
    p, y = [1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0]
    assert mt.accuracy(p, y) == pytest.approx(4 / 6)
    assert mt.f1_binary(p, y) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert mt.matthews(p, y) == pytest.approx(1 / 3)
    assert mt.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert mt.BUILTIN["spearmanr"]([1, 5, 9], [0, 1, 100]) == pytest.approx(1.0)
    assert mt.headline_of(["accuracy", "f1"], None, {"eval_loss": 1, "eval_f1": 0.5}) == "f1"


def _callback(tmp_path, **kw):
    writer = ProgressWriter(tmp_path / "progress.jsonl")
    return _CallbackMixin(progress=writer, is_main=True, process_start=time.time(), **kw), writer


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    cb, writer = _callback(tmp_path)
    state = SimpleNamespace(global_step=12, epoch=0.4, max_steps=100)
    with pytest.raises(NaNLossError, match=r"loss is nan at step 12.*Lower train.learning_rate"):
        cb.on_log(SimpleNamespace(), state, SimpleNamespace(), logs={"loss": math.nan, "learning_rate": 1e3})
    assert json.loads(writer.path.read_text().splitlines()[-1])["event"] == "nan"


def test_progress_lines_carry_step_loss_lr_and_eta(tmp_path):
    cb, writer = _callback(tmp_path)
    args = SimpleNamespace(train_batch_size=8, gradient_accumulation_steps=1, world_size=1)
    state = SimpleNamespace(global_step=0, epoch=0.0, max_steps=100)
    cb.on_train_begin(args, state, SimpleNamespace())
    cb.t_begin -= 10  # pretend 10 s passed
    state.global_step, state.epoch = 20, 0.5
    cb.on_log(args, state, SimpleNamespace(), logs={"loss": 0.5, "learning_rate": 1e-5})
    rec = json.loads(writer.path.read_text().splitlines()[-1])
    assert rec["event"] == "train" and rec["step"] == 20 and rec["loss"] == 0.5 and rec["learning_rate"] == 1e-5
    assert rec["eta_s"] == pytest.approx(40, rel=0.05) and rec["eta"] == "0:00:40"


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        (root / f"checkpoint-{step}").mkdir(parents=True)
    ck.mark_complete(root / "checkpoint-10", {"step": 10})
    ck.mark_complete(root / "checkpoint-20", {"step": 20})
    assert ck.latest_complete(root).name == "checkpoint-20"
    assert [p.name for p in ck.remove_incomplete(root)] == ["checkpoint-30"]
    err = ck.describe_failure(OSError(errno.ENOSPC, "No space left on device"), root / "checkpoint-40", root)
    assert err.errno == errno.ENOSPC
    assert "disk full while writing checkpoint-40" in str(err) and "checkpoint-20 is intact" in str(err)


def test_every_example_job_validates():
    settings = load_settings()
    files = sorted((ROOT / "jobs").glob("*.yaml"))
    names = {f.name for f in files}
    assert {"mrpc-bert-gpu.yaml", "yelp-bert-cased.yaml", "csv-text-classifier.yaml", "cola-bert-npu.yaml",
            "cola-bert-npu-modelers.yaml", "tutorial-script.yaml"} <= names
    for f in files:
        loaded = load_job(f, settings)
        t = loaded.job.train
        if t and Path(t.dataset).suffix == ".csv":
            assert loaded.path(t.dataset).is_file(), f
    npu = load_job(ROOT / "jobs" / "cola-bert-npu.yaml", settings).job
    assert npu.resources.device == "npu" and npu.train.dataset == "glue/cola"
    om = load_job(ROOT / "jobs" / "cola-bert-npu-modelers.yaml", settings).job  # the openMind tutorial's ids
    assert om.resources.device == "npu" and om.train.model == "PyTorch-NPU/bert_base_cased"
    assert om.train.dataset == "AI_Connect/glue:cola"


def test_show_prints_config_metrics_and_paths(run_hpcft, hpcft_home):
    from hpcft.runs.index import RunRecord, RunStore, now_iso

    paths = make_run(tiny_job())
    (paths.dir / "curves.png").write_bytes(b"png")
    paths.metrics.write_text(json.dumps({
        "headline": "accuracy", "eval": {"accuracy": 0.875, "f1": 0.86, "loss": 0.3, "runtime": 0.1},
        "train": {"global_step": 96, "runtime_s": 3.2, "samples_per_second": 480.0, "loss": 0.41},
        "device": "cpu", "device_name": "cpu (2 threads)", "precision": "fp32",
        "peak_memory_mb": {"host_rss_mb": 900.0}, "restarts": 1, "resumes": 1, "first_step_s": 4.2}))
    store = RunStore(load_settings().runs)
    store.add(RunRecord(run_id=paths.run_id, name="mrpc-tiny", run_dir=str(paths.dir), job_file=None,
                        kind="train", executor="local", submitted_at=now_iso(), job_id="123", state="COMPLETED"))
    out = run_hpcft("show", paths.run_id, check=True).stdout
    assert "result:    accuracy 0.8750" in out and "model:" in out and "glue/mrpc" in out
    assert "restarts:  1 (resumed 1x)" in out and str(paths.dir / "curves.png") in out
    data = json.loads(run_hpcft("show", "--json", check=True).stdout)
    assert data["metrics"]["headline"] == "accuracy" and data["files"]["run_dir"] == str(paths.dir)
    runs = run_hpcft("runs", check=True).stdout
    assert "accuracy 0.8750" in runs


def test_npu_device_and_precision_with_a_torch_npu_double(monkeypatch):
    """The NPU path up to the import boundary: torch_npu replaced by a test double."""
    import types

    import torch

    from hpcft.worker.device import detect

    fake_npu = types.SimpleNamespace(is_available=lambda: True, get_device_name=lambda i: "Ascend910B3",
                                     is_bf16_supported=lambda: True)
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", fake_npu, raising=False)
    info = detect("npu", "auto")
    assert (info.kind, info.name, info.precision) == ("npu", "Ascend910B3", "bf16")
    fake_npu.is_bf16_supported = lambda: False  # Ascend 910A: fp16
    assert detect("npu", "auto").precision == "fp16"


def test_npu_job_without_torch_npu_names_the_env_and_the_extra(monkeypatch):
    from hpcft.worker.device import DeviceError, detect

    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import torch_npu -> ImportError
    monkeypatch.setenv("CONDA_DEFAULT_ENV", "torch-npu")
    with pytest.raises(DeviceError, match=r"torch_npu cannot be imported in torch-npu.*hpcft\[npu\]"):
        detect("npu", "auto")


def test_precision_rules_on_cpu():
    from hpcft.worker.device import DeviceError, detect

    assert detect("cpu", "auto").precision == "fp32"
    assert detect("cpu", "bf16").precision == "bf16"
    with pytest.raises(DeviceError, match="fp16 needs a GPU or NPU"):
        detect("cpu", "fp16")


def test_a_job_queued_before_the_upgrade_still_unpickles():
    """submitit pickles of jobs submitted by hpcft 0.1 name ``hpcft.launch.Worker``."""
    import pickle

    from hpcft.entry import WorkerCall

    # protocol 2 by hand: GLOBAL 'hpcft.launch Worker', NEWOBJ, then its __dict__ {'run_dir': '/tmp/r'}
    old = (b"\x80\x02chpcft.launch\nWorker\nq\x00)\x81q\x01}q\x02X\x07\x00\x00\x00run_dirq\x03"
           b"X\x06\x00\x00\x00/tmp/rq\x04sb.")
    worker = pickle.loads(old)
    assert isinstance(worker, WorkerCall) and worker.run_dir == "/tmp/r"
    assert b"hpcft.entry" in pickle.dumps(WorkerCall("/tmp/r"))  # new pickles name the entry module


def test_old_names_still_work_after_the_move(tmp_path):
    """Saved SCOW portal scripts run ``python -m hpcft.scow_rerun``; run folders written before a
    field was added (or with one since dropped) still read."""
    import json

    from hpcft.core.rundir import LaunchSpec

    proc = subprocess.run([sys.executable, "-m", "hpcft.scow_rerun", str(tmp_path)], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"})
    assert proc.returncode == 2 and "usage (inside a Slurm job): python -m hpcft.scow_rerun RUN_DIR" in proc.stderr
    (tmp_path / "launch.json").write_text(json.dumps({
        "kind": "script", "run_dir": str(tmp_path), "workdir": str(tmp_path), "output_dir": str(tmp_path / "out"),
        "base_dir": str(tmp_path), "script": "run.py", "a_field_from_an_older_hpcft": 1}))
    spec = LaunchSpec.read(tmp_path)
    assert spec.kind == "script" and spec.device == "cpu" and spec.nodes == 1 and spec.args == []
