"""SCOW (OpenSCOW) placement and the portal's saved job: unit checks, golden scripts, and the
real thing on the dev Slurm under a fake $HOME with scow/."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from devtools.wait import wait_for
from hpcft.core.config import Scow, Settings
from hpcft.core.job_load import load_job
from hpcft.runs.index import RunStore
from hpcft.submit.pipeline import scow
from hpcft.submit.render import make_plan, render_script
from tests.conftest import hpcft, hpcft_json
from tests.test_render import FIXTURES, ROOT, check_golden

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "scow_saved_job.schema.json").read_text())


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "scow").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


def _plan(path: Path, settings: Settings, scow_dir: Path):
    loaded = load_job(path, settings)
    plan = make_plan(loaded, settings, Path("/runs/RUN-ID"), loaded.job.resources.partition or "cpu",
                     python="python", scow_dir=scow_dir)
    plan.created = "2026-01-01 00:00:00 +0000"
    return plan


@pytest.mark.parametrize("path", [p for p in FIXTURES if p.stem in ("script-cpu", "hostile")], ids=lambda p: p.stem)
def test_scow_golden(path, monkeypatch):
    monkeypatch.delenv("HPCFT_CACHE", raising=False)
    settings = Settings(runs_dir=Path("/runs"), cache_dir=Path("/cache"), scow=Scow(enabled=True))
    name = load_job(path, settings).job.name
    plan = _plan(path, settings, Path("/home/u/scow/jobs") / scow.folder_name(name))
    text = render_script(plan).replace(str(ROOT), "<repo>")
    chdir = next(ln for ln in text.splitlines() if ln.startswith("#SBATCH --chdir="))
    assert "/home/u/scow/jobs/" in chdir and "--rerun" in text
    check_golden(f"scow-{path.stem}.sbatch", text)
    result = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_setting_follows_portal_yaml(fake_home):
    assert scow.enabled(Settings())  # ~/scow exists: on by default
    assert not scow.enabled(Settings(scow=Scow(enabled=False)))
    (fake_home / "scow").rmdir()
    assert not scow.enabled(Settings())
    assert scow.job_folder(Settings(), "mrpc") == fake_home / "scow/jobs/mrpc"
    custom = Settings(scow=Scow(job_dir="portal/{{ name }}/run", saved_jobs_dir="/shared/saved"))
    assert scow.job_folder(custom, "a/b") == fake_home / "portal/a_b/run"  # a name is one path component
    assert scow.saved_jobs_dir(custom) == Path("/shared/saved")
    assert scow.folder_name("..") == "_"
    assert Scow().job_dir_differences() == [] and custom.scow.job_dir_differences() == []


@pytest.mark.parametrize("job_dir, folder, problem", [
    # parsePlaceholder (OpenSCOW libs/libconfig/src/parse.ts): /\{\{ ([a-zA-Z0-9_]+) \}\}/, unknown key -> ""
    ("portal/{{name}}/run", "portal/{{name}}/run", "keeps '{{name}}' as written"),
    ("portal/{{  name }}", "portal/{{  name }}", "keeps '{{  name }}' as written"),
    ("portal/{{ user }}/{{ name }}", "portal/x", "replaces '{{ user }}' with nothing"),
    # calculateWorkingDirectory (SubmitJobForm.tsx:163): join(homePath + "/", ...), absolute or not
    ("/scratch/{{ name }}", "scratch/x", "joins it onto your home folder"),
    ("~/jobs/{{ name }}", "~/jobs/x", "joins it onto your home folder"),
])
def test_placeholders_as_the_portal_reads_them(fake_home, job_dir, folder, problem):
    settings = Settings(scow=Scow(job_dir=job_dir))
    assert scow.job_folder(settings, "x") == fake_home / folder
    [line] = settings.scow.job_dir_differences()
    assert problem in line and line.startswith(f"scow.job_dir '{job_dir}'")


def test_check_and_submit_note_a_job_dir_the_portal_reads_otherwise(tmp_path):
    from hpcft.core.job import Job
    from hpcft.preflight import checks, rules

    assert checks.scow_job_dir in rules.RULES
    job = Job.model_validate({"name": "j", "script": "x.py"})
    odd = Settings(scow=Scow(job_dir="jobs/{{name}}"))
    [note] = checks.scow_job_dir(checks.Preflight(job, odd, tmp_path))
    assert note.ok and note.line().startswith("✓ scow job folder: note: scow.job_dir 'jobs/{{name}}'")
    assert list(checks.scow_job_dir(checks.Preflight(job, Settings(), tmp_path))) == []
    assert list(checks.scow_job_dir(checks.Preflight(job, odd, tmp_path, executor="local"))) == []


def test_saved_job_matches_the_portal_schema(fake_home, tmp_path):
    job = tmp_path / "job.yaml"
    (tmp_path / "run.py").write_text("print('hi')\n")
    job.write_text("name: 'x\"; touch /tmp/pwned'\nscript: run.py\n"
                   "resources: {partition: gpu, gpus_per_node: 1, cpus_per_task: 4, qos: normal, "
                   "account: lab, time: 2h}\n")
    settings = Settings()
    plan = _plan(job, settings, scow.job_folder(settings, "x"))
    path = scow.save_template(plan, "123", "RUN-ID", plan.scow_dir / "job.123.sh")
    assert path.parent == fake_home / "scow" / "savedJobs" and path.name == 'x"; touch _tmp_pwned-123'
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["gpuCount"] == 1 and doc["coreCount"] == 4 and doc["maxTime"] == 120 and "memory" not in doc
    assert doc["qos"] == "normal" and doc["account"] == "lab" and doc["comment"] == "hpcft run RUN-ID"
    assert doc["command"].startswith("bash ") and doc["command"].endswith(" --rerun")
    assert doc["scriptOutput"] == 'x"; touch /tmp/pwned.sh'  # the portal's own default: <jobName>.sh, no %j
    with pytest.raises(jsonschema.ValidationError):  # the schema does reject what the portal cannot read
        jsonschema.validate({**doc, "nodeCount": "1"}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):  # a bare number: the portal's memory.split fails
        jsonschema.validate({**doc, "memory": 16384}, SCHEMA)


@pytest.mark.parametrize("resources, gap", [
    ("{partition: npu, npus_per_node: 1}", "1 NPU(s) per node"),
    ("{partition: gpu, gpus_per_node: 2}", "1 node(s) x 2 task(s)"),
    ("{partition: cpu, mem: 16G}", "--mem=16G"),
])
def test_what_the_form_cannot_ask_for_is_saved_as_a_handoff(fake_home, tmp_path, resources, gap):
    (tmp_path / "run.py").write_text("print('hi')\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"name: big\nscript: run.py\nresources: {resources}\n")
    settings = Settings()
    plan = _plan(job, settings, scow.job_folder(settings, "big"))
    assert any(gap in g for g in scow.portal_gaps(plan.job, settings))
    doc = scow.saved_job(plan, "7", "RUN-ID", plan.scow_dir / "job.7.sh")
    jsonschema.validate(doc, SCHEMA)
    # a small job (no GPU: on an NPU partition the form's gpuCount would emit --gres=gpu:N)
    assert (doc["nodeCount"], doc["coreCount"], doc["gpuCount"]) == (1, 1, 0)
    assert "submits it with its own resources" in doc["comment"]
    assert any(gap in line for line in scow.template_notes(plan.job, settings))


def test_allocation_misses():
    from hpcft.core.job import Job
    from hpcft.submit.rerun import Allocation

    job = Job.model_validate({"name": "j", "script": "x.py",
                              "resources": {"gpus_per_node": 1, "cpus_per_task": 2}})
    env = {"SLURM_JOB_ID": "5", "SLURM_JOB_NAME": "job-20260101-000000", "SLURM_CPUS_PER_TASK": "1",
           "SLURM_GPUS_ON_NODE": "1"}
    alloc = Allocation.from_env(env)
    assert (alloc.name, alloc.tasks, alloc.gpus) == ("job-20260101-000000", 1, 1)
    assert alloc.misses(job) == ["2 cores per task, got 1"]
    assert Allocation.from_env({**env, "SLURM_CPUS_PER_TASK": "2"}).misses(job) == []
    del env["SLURM_GPUS_ON_NODE"]
    assert Allocation.from_env(env).misses(job)[-1] == "1 GPU(s), got 0"


def test_the_file_browser_gets_a_folder(tmp_path):
    from hpcft.core.rundir import RunPaths

    run, folder = RunPaths(tmp_path / "runs" / "R1"), tmp_path / "scow" / "jobs" / "j"
    run.dir.mkdir(parents=True)
    (folder).mkdir(parents=True)
    os.symlink(run.dir, folder / "hpcft-R1")  # as an older hpcft left it
    scow.place(run, folder, "9", "#!/bin/bash\n")
    exposed = folder / "hpcft-R1"
    # sshFile.ts lists a folder only when the listing line starts with "d": a real folder
    assert exposed.is_dir() and not exposed.is_symlink()
    assert str(run.dir) in (exposed / "README.txt").read_text()
    assert (exposed / "run").resolve() == run.dir.resolve()
    assert (exposed / "job.yaml").is_symlink() and (folder / "job.9.sh").is_file()


# --------------------------------------------------------------------------- on the dev Slurm

HELLO = "import os\nprint('HELLO from', os.environ['HPCFT_RUN_DIR'], 'in', os.getcwd(), flush=True)\n"


def _wait(ref: str, env: dict, timeout: float = 240) -> dict:
    return wait_for(lambda: hpcft_json("status", ref, env=env),
                    until=lambda st: st["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                                     "OUT_OF_MEMORY"),
                    timeout=timeout, interval=0.5, what=f"job {ref} to end")


def _wait_known(ref: str, env: dict, timeout: float = 240) -> None:
    """A rerun registers its run once the portal's job starts."""
    wait_for(lambda: hpcft("status", ref, env=env).returncode == 0, timeout=timeout, interval=0.5,
             what=f"the portal's job {ref} to register its run (hpcft status {ref} to succeed)",
             describe=lambda _: subprocess.run(["scontrol", "show", "job", ref], capture_output=True,
                                               text=True).stdout)


def _slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True).stdout


class Portal:
    """The SCOW portal resubmitting a saved job from its web form, as the sources do it
    (OpenSCOW 2e4194fe, scow-slurm-adapter 979664ce). Each rule names its source."""

    def __init__(self, home: Path, modulepath: Path):
        self.home, self.modulepath = home, modulepath
        # checkJobNameExisting asks the adapter's getJobs, which reads slurmdbd: the dev cluster
        # has no accounting (AccountingStorageType=accounting_storage/none), so the model keeps
        # the names it has submitted itself
        self.used_names: set[str] = set()
        self.clock = 0

    def partition(self, name: str) -> tuple[int, int]:
        """(cores, gpus) of a partition as the adapter reports them (services/config/config.go
        GetClusterConfig: cores = the partition's TotalCPUs (186); gpus = the last ':' field of the
        first node's Gres line x nodes (309-346), so a node with gpu:2,npu:2 counts 2 "GPUs")."""
        part = _slurm("scontrol", "show", "partition", name, "-o")
        cores, nodes = (int(part.split(f"{k}=")[1].split()[0]) for k in ("TotalCPUs", "TotalNodes"))
        node = part.split(" Nodes=")[1].split()[0]
        gres = [ln for ln in _slurm("scontrol", "show", "node", node).splitlines() if " Gres=" in ln]
        last = gres[0].split(":")[-1].strip() if gres else "(null)"
        return cores, int(last) * nodes if last.isdigit() else 0

    def form(self, doc: dict) -> dict:
        """The form loaded from a saved job (apps/portal-web/src/pageComponents/job/SubmitJobForm.tsx)."""
        # protos/portal/job.proto message JobTemplate (77-93): no memory, no submitTime
        keep = ("jobName", "account", "partition", "qos", "nodeCount", "coreCount", "gpuCount", "maxTime",
                "command", "workingDirectory", "output", "errorOutput", "comment", "scriptOutput", "maxTimeUnit")
        form = {k: doc[k] for k in keep if k in doc}
        # genJobName (58-60), set once cluster info loads (176-177): job-YYYYMMDD-HHmmss
        self.clock += 1  # two form loads here come a second apart, as a user's would
        form["jobName"] = time.strftime("job-%Y%m%d-%H%M%S", time.localtime(time.time() + self.clock))
        # calculateWorkingDirectory (163-164) on a jobName change (201-206, 216-218), the field untouched:
        # join(homePath + "/", parsePlaceholder(submitJobDirTemplate, {name})); default scow/jobs/{{ name }}
        # (libs/config/src/portal.ts submitJobDefaultPwd)
        form["workingDirectory"] = str(scow.portal_path(scow.parse_placeholder("scow/jobs/{{ name }}",
                                                                                {"name": form["jobName"]})))
        # calculateScriptOutput (166-169, 207-214): "<jobName>.sh"
        form["scriptOutput"] = form["jobName"] + ".sh"
        cores, gpus = self.partition(form["partition"])
        # submit (108-109): on a partition with GPUs, coreCount = gpuCount x floor(cores / gpus)
        if form.get("gpuCount"):
            form["coreCount"] = form["gpuCount"] * (cores // gpus)
        # memorySize (373-378): computed from the partition; the adapter never uses it (below)
        return form

    def submit(self, form: dict) -> str:
        """apps/portal-server/src/services/job.ts submitJob (230-318) through the adapter."""
        name = form["jobName"]
        # checkJobNameExisting (libs/server/src/job.ts 32-57, called at services/job.ts 237-243)
        if name in self.used_names:
            raise ValueError(f"jobName {name} is already existed")
        self.used_names.add(name)
        wd = form["workingDirectory"]
        Path(wd).mkdir(parents=True, exist_ok=True)  # createDirectoriesRecursively (248-251)
        # scow-slurm-adapter services/job/job.go SubmitJob (1174-1219)
        lines = ["#!/bin/bash"]
        if form.get("account"):  # -A (1175); the dev cluster has no accounts to name
            lines.append(f"#SBATCH -A {form['account']}")
        lines.append(f"#SBATCH --partition={form['partition']}")  # 1176
        if form.get("qos"):
            lines.append(f"#SBATCH --qos={form['qos']}")  # 1177-1179
        lines += [f"#SBATCH -J {name}", f"#SBATCH --nodes={form['nodeCount']}",  # 1180-1181
                  f"#SBATCH -c {form['coreCount']}", f"#SBATCH --time={form['maxTime']}",  # 1182-1185
                  # 1187-1196: a relative directory is put under the home folder
                  f"#SBATCH --chdir={wd if os.path.isabs(wd) else str(self.home) + '/' + wd}",
                  f"#SBATCH --output={form['output']}", f"#SBATCH --error={form['errorOutput']}"]  # 1198-1203
        # 1204-1207: the --mem line is commented out ("强行删除"), memory is dropped
        if form.get("gpuCount"):
            lines.append(f"#SBATCH --gres=gpu:{form['gpuCount']}")  # 1208-1210
        lines += ["", f"source {self.modulepath}", form["command"]]  # 1218-1221
        script = "\n".join(lines)
        # utils/utils.go LocalSubmitJob (365): su - USER -c sbatch, the script on stdin, from the home folder
        out = subprocess.run(["sbatch"], input=script, capture_output=True, text=True, check=True,
                             cwd=self.home, env={**os.environ, "HOME": str(self.home)}).stdout
        job_id = out.split()[-1]
        # services/job.ts 280-287: the generated script written literally to join(workingDirectory, scriptOutput)
        (Path(wd) / form["scriptOutput"]).write_text(script)
        return job_id


@pytest.fixture
def portal(fake_home, tmp_path):
    profile = tmp_path / "profile.sh"  # the adapter's modulepath.path profile
    profile.write_text("export FROM_THE_PORTAL_PROFILE=1\n")
    return Portal(fake_home, profile)


@pytest.mark.slurm
def test_scow_job_logs_script_template_and_portal_rerun(slurm, fake_home, portal, tmp_path):
    env = {"HOME": str(fake_home)}
    (tmp_path / "hello.py").write_text(HELLO)
    job = tmp_path / "job.yaml"
    job.write_text("name: scow-hello\nscript: hello.py\nresources: {partition: gpu, gpus_per_node: 1, time: '5'}\n")
    sub = hpcft_json("submit", str(job), "--save-template", env=env)
    assert _wait(sub["run_id"], env)["state"] == "COMPLETED"
    folder = fake_home / "scow" / "jobs" / "scow-hello"
    jid = sub["job_id"]
    for name in (f"job.{jid}.out", f"job.{jid}.err", f"job.{jid}.sh"):
        assert (folder / name).is_file() and not (folder / name).is_symlink(), name
    assert "HELLO from" in (folder / f"job.{jid}.out").read_text()
    run_dir = Path(sub["run_dir"])
    assert (run_dir / "scow").resolve() == folder.resolve()
    exposed = folder / f"hpcft-{sub['run_id']}"  # a real folder: the portal's file browser opens it
    assert exposed.is_dir() and not exposed.is_symlink() and str(run_dir) in (exposed / "README.txt").read_text()
    assert (exposed / "run").resolve() == run_dir.resolve()
    assert os.path.samefile(run_dir / f"job.{jid}.out", folder / f"job.{jid}.out")
    assert (folder / f"job.{jid}.sh").read_text() == (run_dir / "job.sh").read_text()
    # the job ran in the portal's working directory as Slurm sees it; the script in its own folder
    work = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True).stdout
    assert f"WorkDir={folder}" in work
    logs = hpcft("logs", sub["run_id"], env=env, check=True).stdout
    assert f"HELLO from {run_dir} in {tmp_path}" in logs

    saved = fake_home / "scow" / "savedJobs" / f"scow-hello-{jid}"
    doc = json.loads(saved.read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["workingDirectory"] == str(folder) and sub["run_id"] in doc["comment"]
    assert doc["gpuCount"] == 1 and doc["scriptOutput"] == "scow-hello.sh"
    assert "new job name (job-YYYYMMDD-HHmmss)" in sub["template_notes"][0] and len(sub["template_notes"]) == 1

    # "Submit" on job.<id>.sh in the file browser (SubmitScriptAsJob: the script as it is, it has
    # --chdir) starts its own job alongside the portal's rerun below
    copy = subprocess.run(["sbatch", "--parsable", str(folder / f"job.{jid}.sh")], capture_output=True,
                          text=True, check=True, cwd=folder, env={**os.environ, **env}).stdout.strip()

    # resubmit from the portal's form
    form = portal.form(doc)
    new_id = portal.submit(form)
    with pytest.raises(ValueError, match="already existed"):  # the same name again is refused
        portal.submit(form)
    new_folder = Path(form["workingDirectory"])
    assert new_folder == fake_home / "scow" / "jobs" / form["jobName"]
    script = (new_folder / form["scriptOutput"]).read_text()  # written literally: %j as it is
    assert "--output=job.%j.out" in script and "--gres=gpu:1" in script and "--mem" not in script
    _wait_known(new_id, env)
    st = _wait(new_id, env)
    assert st["state"] == "COMPLETED", st
    assert st["run_id"] != sub["run_id"]
    rerun_log = hpcft("logs", new_id, env=env, check=True).stdout
    assert f"rerun of {sub['run_id']}" in rerun_log and f"HELLO from {st['run_dir']}" in rerun_log
    assert (new_folder / f"job.{new_id}.out").is_file() and (new_folder / f"hpcft-{st['run_id']}").is_dir()
    runs = {r["job_id"]: r for r in hpcft_json("runs", env=env)}
    assert runs[new_id]["rerun_of"] == sub["run_id"] and runs[new_id]["name"] == form["jobName"]
    assert f"rerun of {sub['run_id']}" in hpcft("runs", env=env, check=True).stdout
    assert [r["job_id"] for r in RunStore(run_dir.parent).reruns(run_dir)] == [new_id]
    assert f"rerun of:  {sub['run_id']}" in hpcft("show", new_id, env=env, check=True).stdout
    assert hpcft_json("show", sub["run_id"], env=env)["reruns"] == [st["run_id"]]

    # the copy submitted from the file browser stopped at once, with what to do instead
    wait_for(lambda: _slurm("scontrol", "show", "job", "-o", copy),
             until=lambda info: any(f"JobState={s} " in info for s in ("COMPLETED", "FAILED")),
             timeout=120, interval=0.5, what=f"the file browser's copy, job {copy}, to stop")
    err = (folder / f"job.{copy}.err").read_text()
    assert f"hpcft: this script belongs to job {jid}; to run the job again: hpcft submit {job}" in err, err
    assert "HELLO" not in (folder / f"job.{copy}.out").read_text()


@pytest.mark.slurm
def test_save_template_needs_scow(slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/scow: placement off
    (tmp_path / "hello.py").write_text(HELLO)
    job = tmp_path / "job.yaml"
    job.write_text("name: plain\nscript: hello.py\nresources: {time: '5'}\n")
    proc = hpcft("submit", str(job), "--save-template")
    assert proc.returncode == 2 and "SCOW placement" in proc.stderr


@pytest.mark.slurm
def test_sweep_tasks_log_in_the_scow_folder(slurm, fake_home, tmp_path):
    env = {"HOME": str(fake_home)}
    (tmp_path / "hello.py").write_text(HELLO)
    job = tmp_path / "sweep.yaml"
    job.write_text("name: scow-sweep\nscript: hello.py\nresources: {time: '5'}\n"
                   "sweep: {points: [{args: [a]}, {args: [b]}]}\n")
    sub = hpcft_json("submit", str(job), env=env)
    wait_for(lambda: hpcft_json("status", sub["sweep_id"], env=env), until=lambda st: st["states"] == {"COMPLETED": 2},
             timeout=240, interval=0.5, what=f"both tasks of sweep {sub['sweep_id']} to complete")
    folder = fake_home / "scow" / "jobs" / "scow-sweep"
    array = sub["job_id"]
    assert (folder / f"job.{array}.sh").read_text() == (Path(sub["run_dir"]) / "job.sh").read_text()
    for i, run_id in enumerate(sub["tasks"]):
        out = folder / f"job.{array}_{i}.out"
        assert f"HELLO from {sub['run_dir']}/{run_id}" in out.read_text()
        assert os.path.samefile(Path(sub["run_dir"]) / run_id / f"job.{array}_{i}.out", out)
        assert "HELLO from" in hpcft("logs", f"{array}_{i}", env=env, check=True).stdout


@pytest.mark.slurm
def test_portal_rerun_of_an_npu_job_submits_it_with_its_npus(slurm, fake_home, portal, tmp_path):
    """The form asks only for --gres=gpu:N: an NPU job is saved as a small job that submits it
    again with its own resources, under the portal's name and in the portal's folder."""
    env = {"HOME": str(fake_home)}
    (tmp_path / "hello.py").write_text(HELLO + "print('NPUS', os.environ.get('ASCEND_RT_VISIBLE_DEVICES'))\n")
    job = tmp_path / "job.yaml"
    job.write_text("name: scow-npu\nscript: hello.py\nresources: {partition: npu, npus_per_node: 1, time: '5'}\n")
    proc = hpcft("submit", str(job), "--save-template", env=env, check=True)
    assert "cannot ask for: 1 NPU(s) per node" in proc.stdout, proc.stdout
    said = {ln.split(":")[0]: ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith(("job:", "run:"))}
    jid, original = said["job"], said["run"]
    doc = json.loads((fake_home / "scow" / "savedJobs" / f"scow-npu-{jid}").read_text())
    assert (doc["gpuCount"], doc["coreCount"], doc["partition"]) == (0, 1, "npu")
    form = portal.form(doc)
    launcher = portal.submit(form)
    folder = Path(form["workingDirectory"])
    _wait_known(form["jobName"], env)
    st = _wait(form["jobName"], env)  # the run the portal's job submitted, under the portal's name
    assert st["state"] == "COMPLETED", st
    assert st["job_id"] != launcher and st["run_id"] != jid
    log = hpcft("logs", st["job_id"], env=env, check=True).stdout
    assert f"HELLO from {st['run_dir']}" in log
    # Why this cannot race (a CI run got NPUS 1 while another test's job held NPU 0): the job gets
    # one NPU of the node's two, and which one depends on what else holds the npu gres now, so either
    # index passes; a job that has to wait for an NPU waits in the queue, inside _wait's 240 s.
    assert re.search(r"^NPUS [01]$", log, re.M), log
    assert (folder / f"job.{st['job_id']}.out").is_file()
    said = (folder / f"job.{launcher}.out").read_text()
    assert f"submitted job {st['job_id']}" in said and "1 NPU(s) per node" in said
    runs = {r["job_id"]: r for r in hpcft_json("runs", env=env)}
    assert runs[st["job_id"]]["rerun_of"] == original and runs[st["job_id"]]["name"] == form["jobName"]
    # the portal lists its own job: its id names the run it submitted
    assert hpcft_json("status", launcher, env=env)["run_id"] == st["run_id"]
    assert f"HELLO from {st['run_dir']}" in hpcft("logs", launcher, env=env, check=True).stdout
