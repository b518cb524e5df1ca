"""The SCOW interactive-app definitions hpcft ships (contrib/scow/apps/*.yml, issue 20): valid
against a JSON schema derived from OpenSCOW's libs/config/src/app.ts (tests/schemas/scow_app.schema.json
names the commit), with the rules getAppConfigs and the docs add; their scripts run as the portal
runs them (before.sh and script.sh, with server_entry.sh's helpers) and start the right hpcft
command with the form's values, quoted."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
APPS = sorted((ROOT / "contrib" / "scow" / "apps").glob("*.yml"))
SCHEMA = json.loads((ROOT / "tests" / "schemas" / "scow_app.schema.json").read_text())

# OpenSCOW apps/portal-server/assets/slurm/server_entry.sh at 2e4194fe (the helpers every app's
# scripts may call, and HOST), then `source before.sh` and `bash -l script.sh`
SERVER_ENTRY = """function get_port {
  echo $(python3 -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1]); s.close()')
}
function get_password {
  local password=$(head /dev/urandom | tr -dc A-Za-z0-9 | head -c$1)
  echo $password
}
export HOST=$(hostname)
source before.sh
bash -l script.sh
"""
PLACEHOLDER = re.compile(r"\{\{ ([A-Za-z0-9_]+) \}\}")  # libs/libconfig/src/parse.ts: one space each side


def _validator():
    from jsonschema import Draft201909Validator

    Draft201909Validator.check_schema(SCHEMA)
    return Draft201909Validator(SCHEMA)


def test_both_apps_are_shipped():
    assert [p.name for p in APPS] == ["hpcft-demo.yml", "hpcft-tensorboard.yml"]


@pytest.mark.parametrize("path", APPS, ids=lambda p: p.name)
def test_app_validates_against_the_app_ts_schema(path):
    app = yaml.safe_load(path.read_text())
    errors = sorted(_validator().iter_errors(app), key=str)
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    # nothing the portal would silently ignore (a typo): only app.ts's keys, plus the docs' id
    assert set(app) <= set(SCHEMA["properties"]) | {"id"} and app.get("id") == path.stem
    assert set(app["web"]) <= set(SCHEMA["$defs"]["web"]["properties"])
    assert set(app["web"]["connect"]) <= set(SCHEMA["$defs"]["connect"]["properties"])
    for attr in app.get("attributes", []):
        assert set(attr) <= set(SCHEMA["$defs"]["attribute"]["properties"])
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", attr["name"])  # exported as a shell variable
    # configure-web-app.md: beforeScript exports PORT and PASSWORD; connect uses only exported names
    before = app["web"]["beforeScript"]
    exported = set(re.findall(r"^export ([A-Z_]+)=", before, re.M))
    assert {"PORT", "PASSWORD"} <= exported
    connect = app["web"]["connect"]
    used = [m for v in [connect["path"], *connect.get("query", {}).values(), *connect.get("formData", {}).values()]
            for m in PLACEHOLDER.findall(v)]
    assert used == ["PASSWORD"] and set(used) <= exported
    assert connect == {"method": "POST", "path": "/hpcft-login", "formData": {"password": "{{ PASSWORD }}"}}


@pytest.mark.parametrize("bad", [
    {"name": "x", "type": "web"},                                               # type web without web:
    {"name": "x", "type": "web", "web": {"proxyType": "relative", "beforeScript": "", "script": "",
                                         "connect": {"method": "PUT", "path": "/"}}},
    {"name": "x", "type": "vnc", "vnc": {"xstartup": "x"},
     "attributes": [{"type": "select", "label": "v", "name": "V", "required": True}]},   # select without options
    {"name": "x", "type": "vnc", "vnc": {"xstartup": "x"},
     "attributes": [{"type": "number", "label": "n", "name": "N", "required": True, "defaultValue": "4"}]},
    {"name": "x", "type": "vnc", "vnc": {"xstartup": "x"}, "appComment": {"i18n": {"en": "no default"}}},
])
def test_the_schema_refuses_what_the_portal_refuses(bad):
    assert list(_validator().iter_errors(bad))


def _portal_scripts(app: dict, workdir: Path, attributes: dict) -> Path:
    """The files OpenSCOW's portal-server writes for a web app (clusterops/app.ts): before.sh =
    PROXY_BASE_PATH + the form's values + beforeScript + the session info line; script.sh."""
    exports = "".join(f"export {k}={_quote(v)}\n" for k, v in attributes.items())
    session = 'echo -e "{\\"HOST\\":\\"$HOST\\",\\"PORT\\":$PORT,\\"PASSWORD\\":\\"$PASSWORD\\"}" >$SERVER_SESSION_INFO'
    (workdir / "before.sh").write_text("export PROXY_BASE_PATH='/scow/api/proxy/hpc01/relative'\n" + exports
                                       + app["web"]["beforeScript"] + session)
    (workdir / "script.sh").write_text("#!/bin/bash -l\n" + app["web"]["script"])
    (workdir / "script.sh").chmod(0o755)
    (workdir / "entry.sh").write_text(SERVER_ENTRY)
    return workdir / "entry.sh"


def _quote(value: str) -> str:  # shell-quote (the npm package) of one word, as app.ts uses it
    return "'" + value.replace("'", "'\\''") + "'" if value else "''"


@pytest.mark.parametrize("path,attributes,argv", [
    ("hpcft-demo.yml", {"RUN": "", "HPCFT_ENV": ""}, ["serve", "--scow-app"]),
    ("hpcft-demo.yml", {"RUN": "x\"; touch pwned; '", "HPCFT_ENV": ""}, ["serve", "x\"; touch pwned; '", "--scow-app"]),
    ("hpcft-tensorboard.yml", {"RUNS": "", "HPCFT_ENV": ""}, ["tensorboard", "--scow-app"]),
    ("hpcft-tensorboard.yml", {"RUNS": "sft-a  sft-b", "HPCFT_ENV": ""}, ["tensorboard", "sft-a", "sft-b", "--scow-app"]),
], ids=["demo-latest", "demo-hostile-run", "tb-all", "tb-two"])
def test_the_app_scripts_run_hpcft_as_the_portal_starts_them(path, attributes, argv, tmp_path):
    app = yaml.safe_load((ROOT / "contrib" / "scow" / "apps" / path).read_text())
    work = tmp_path / "session"
    work.mkdir()
    entry = _portal_scripts(app, work, attributes)
    fake = tmp_path / "bin" / "hpcft"  # records what the app runs, with the variables it sees
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env python3\nimport json, os, sys\nprint(json.dumps({"argv": sys.argv[1:], '
                    '"env": {k: os.environ.get(k) for k in ("PORT", "PASSWORD", "PROXY_BASE_PATH", "HOST")}}))\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    # script.sh runs in a login shell (bash -l): PATH comes from the user's profile, as on the cluster
    (tmp_path / ".bash_profile").write_text(f'export PATH="{fake.parent}:$PATH"\n')
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "SERVER_SESSION_INFO": str(work / "server_session_info.json")}
    proc = subprocess.run(["bash", str(entry)], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["argv"] == argv
    assert got["env"]["PORT"].isdigit() and re.fullmatch(r"[A-Za-z0-9]{24}", got["env"]["PASSWORD"])
    assert got["env"]["PROXY_BASE_PATH"] == "/scow/api/proxy/hpc01/relative" and got["env"]["HOST"]
    session = json.loads((work / "server_session_info.json").read_text())  # what the portal reads back
    assert session["PORT"] == int(got["env"]["PORT"]) and session["PASSWORD"] == got["env"]["PASSWORD"]
    assert not (work / "pwned").exists()


def test_scow_app_mode_outside_an_app_is_refused_in_one_line(run_hpcft):
    env = {k: "" for k in ("PORT", "PASSWORD")}
    proc = run_hpcft("tensorboard", "--scow-app", env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("hpcft tensorboard --scow-app: $PORT and $PASSWORD not set; --scow-app runs inside "
                                   "a SCOW interactive app whose beforeScript exports PORT and PASSWORD "
                                   "(contrib/scow/apps/)")
