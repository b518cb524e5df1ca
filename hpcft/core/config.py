"""Site and user settings, layered: cluster < user (< job file < --set, see :mod:`hpcft.core.job`).

* cluster config: ``$HPCFT_CONFIG`` or ``/etc/hpcft/config.yaml`` (written by cluster admins)
* user config:    ``$HPCFT_USER_CONFIG`` or ``$XDG_CONFIG_HOME/hpcft/config.yaml``
  (``~/.config/hpcft/config.yaml``)
* ``$HPCFT_HOME`` (default ``~/hpcft``) holds runs and, unless configured, the cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .preprocess import PreprocessSettings
from .yamlfile import deep_merge, load_yaml_file, sorted_problems, validation_problems

DEFAULT_CLUSTER_CONFIG = "/etc/hpcft/config.yaml"
_DEVICE_SIZE = re.compile(r"^\s*[0-9]+(?:\.[0-9]+)?\s*[KMGT]?(?:i?B)?\s*$", re.IGNORECASE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sources(_Strict):
    """Where ``hpcft stage`` fetches from. Defaults suit clusters in China."""

    # modelers (the openMind hub of the Ascend community) is tried only when listed here
    # or asked for with --source modelers
    order: list[Literal["modelscope", "hf", "modelers"]] = ["hf", "modelscope"]
    hf_endpoint: str = "https://hf-mirror.com"
    modelscope_endpoint: str = "https://www.modelscope.cn"
    modelers_endpoint: str = "https://modelers.cn"
    # a file holding a Modelers access token (private repos); OPENMIND_HUB_TOKEN wins
    modelers_token_file: Optional[Path] = None
    timeout_s: float = Field(30, gt=0)
    retries: int = Field(5, ge=0)
    parallel: int = Field(4, ge=1, le=32)
    # a mirror is a third party: the largest JSON listing answer accepted, and the slowest average
    # speed a download may keep (a request gets timeout_s + size / min_speed in all)
    max_listing_mb: float = Field(8, gt=0, le=1024)
    min_speed_kbs: float = Field(10, gt=0)


class Locks(_Strict):
    """How long a command waits for a lock of the shared cache that somebody else holds (``hpcft
    stage`` of an asset another stage is fetching) before it gives up, naming the holder."""

    wait_s: float = Field(600, gt=0, strict=True, allow_inf_nan=False)  # a number: not "600", not true


def _sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError(f"{value!r} is not a sha256 (64 hex digits, as `hpcft cache doctor` prints them)")
    return value.lower()


def _code_asset(value: str) -> str:
    from .names import UnsafeName, repo_id

    try:
        return repo_id(value, "trusted_code")
    except UnsafeName as exc:
        raise ValueError(str(exc).removeprefix("trusted_code: ")) from None


# trusted_code: {asset repo id: [sha256 of each of its scripts]}
TrustedCode = dict[Annotated[str, AfterValidator(_code_asset)], list[Annotated[str, AfterValidator(_sha256)]]]


class Partitions(_Strict):
    """Which partitions carry which accelerator. Unlisted partitions are classified
    from the gres their nodes offer (npu > gpu > cpu)."""

    gpu: list[str] = []
    npu: list[str] = []
    cpu: list[str] = []


class Aliases(_Strict):
    models: dict[str, str] = {}
    datasets: dict[str, str] = {}
    metrics: dict[str, str] = {}


# SCOW's parsePlaceholder (OpenSCOW libs/libconfig/src/parse.ts): exactly "{{ key }}", one space
# each side; an unknown key becomes "". Anything else between braces stays as written.
SCOW_PLACEHOLDER = re.compile(r"\{\{ ([a-zA-Z0-9_]+) \}\}")
_BRACES = re.compile(r"\{\{(.*?)\}\}")


class Scow(_Strict):
    """SCOW (OpenSCOW) placement: jobs land where the portal looks. Mirrors the admin's
    ``portal.yaml`` (``submitJobDefaultPwd``, ``savedJobsDir``; paths under ``$HOME``)."""

    enabled: Optional[bool] = None                 # None: on when ~/scow exists
    job_dir: str = "scow/jobs/{{ name }}"           # submitJobDefaultPwd
    saved_jobs_dir: str = "scow/savedJobs"          # savedJobsDir
    save_template: bool = False                     # write the portal's saved job on every submit
    # the portal's address with its base path (https://hpc.example.edu/scow) and this cluster's id in
    # SCOW's config/clusters/<id>.yaml: with both, servers (serve, serve --api, tensorboard) bind where the
    # portal's proxy reaches them, require a secret, and print /api/proxy/<cluster>/relative/<node>/<port>/
    portal_url: Optional[str] = Field(None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    cluster: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

    def job_dir_differences(self) -> list[str]:
        """How the portal reads ``job_dir`` otherwise than it looks (one line each): its form
        replaces only ``{{ name }}`` and joins the result onto the home folder
        (``SubmitJobForm.tsx``, ``calculateWorkingDirectory``). hpcft reads it the same way."""
        found = []
        for m in _BRACES.finditer(self.job_dir):
            inner = SCOW_PLACEHOLDER.fullmatch(m.group(0))
            if inner is None and m.group(1).strip() == "name":
                found.append(f"scow.job_dir '{self.job_dir}': the portal reads only '{{{{ name }}}}' (one space "
                             f"each side) and keeps '{m.group(0)}' as written, so all jobs share one folder")
            elif inner is not None and inner.group(1) != "name":
                found.append(f"scow.job_dir '{self.job_dir}': the portal knows only '{{{{ name }}}}' and "
                             f"replaces '{m.group(0)}' with nothing")
        if self.job_dir.startswith(("/", "~")):
            found.append(f"scow.job_dir '{self.job_dir}': the portal joins it onto your home folder "
                         f"(~/{self.job_dir.lstrip('/')}), as hpcft now does; portal.yaml's "
                         "submitJobDefaultPwd is a path relative to the home folder")
        return found


class Settings(_Strict):
    partitions: Partitions = Partitions()
    # partition used when a job asks for devices but names no partition
    default_partition: dict[Literal["gpu", "npu", "cpu"], str] = {}
    gpu_gres: str = "gpu:{n}"  # e.g. "gpu:a100:{n}" on clusters that type their GPUs
    npu_gres: str = "npu:{n}"
    cann_set_env: str = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
    hccl_env: dict[str, str] = {"HCCL_CONNECT_TIMEOUT": "1200", "HCCL_EXEC_TIMEOUT": "1836"}
    account: Optional[str] = None
    qos: Optional[str] = None
    cache_dir: Optional[Path] = None
    cache_group: Optional[str] = None
    # the user who looks after a shared cache: files they own are trusted by everybody (see
    # docs/staging.md, "Security model")
    cache_admin: Optional[str] = None
    # default $HPCFT_HOME/runs; a folder shared on purpose (a lab's) must be sticky (chmod +t), and each
    # run folder in it is 0700 (hpcft.runs.index.ready_runs_root)
    runs_dir: Optional[Path] = None
    templates_dir: Optional[Path] = None
    sources: Sources = Sources()
    aliases: Aliases = Aliases()
    # merged under every job file (lowest job layer), e.g. {"resources": {"partition": "gpu"}}
    job_defaults: dict[str, Any] = {}
    # seconds before the time limit at which Slurm sends USR2 (checkpoint + requeue)
    signal_delay_s: int = Field(120, ge=10)
    # executor when a job says "auto": slurm if sbatch works, else local
    executor: Literal["auto", "slurm", "local"] = "auto"
    scow: Scow = Scow()
    # memory of one GPU/NPU, keyed by gres type, partition or node feature, e.g. {a100: 80G, 910b: 64G}
    # (the LLM memory pre-flight compares its estimate with it; see docs/llm.md)
    device_memory: dict[str, str] = {}
    locks: Locks = Locks()
    # the CPU job that tokenizes a causal-lm job's data first (train.preprocess: cpu-job, hpcft preprocess)
    preprocess: PreprocessSettings = PreprocessSettings()
    # the staged code a job may run, pinned by sha256 per asset (metric scripts: hpcft.core.trusted_code);
    # None: not checked, as before
    trusted_code: Optional[TrustedCode] = None

    @field_validator("device_memory")
    @classmethod
    def _device_memory(cls, v: dict[str, str]) -> dict[str, str]:
        for key, size in v.items():
            if not _DEVICE_SIZE.match(str(size)) or float(re.sub(r"[^0-9.]", "", str(size)) or 0) <= 0:
                raise ValueError(f"{key}: {size!r} is not a size; write it as 80G, 64GB, 80GiB or 81920M")
        return v

    # ---- resolved locations -------------------------------------------------
    @property
    def home(self) -> Path:
        return hpcft_home()

    @property
    def cache(self) -> Path:
        env = os.environ.get("HPCFT_CACHE")
        if env:
            return Path(env).expanduser()
        return (self.cache_dir or self.home / "cache").expanduser()

    @property
    def runs(self) -> Path:
        return (self.runs_dir or self.home / "runs").expanduser()


def hpcft_home() -> Path:
    return Path(os.environ.get("HPCFT_HOME") or "~/hpcft").expanduser()


def config_paths() -> list[Path]:
    cluster = Path(os.environ.get("HPCFT_CONFIG") or DEFAULT_CLUSTER_CONFIG)
    xdg = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    user = Path(os.environ.get("HPCFT_USER_CONFIG") or Path(xdg) / "hpcft" / "config.yaml").expanduser()
    return [cluster, user]


def load_settings(paths: list[Path] | None = None) -> Settings:
    """Merge the cluster and the user config (missing files are fine) and validate each."""
    paths = config_paths() if paths is None else paths
    merged: dict[str, Any] = {}
    problems: list[str] = []
    for path in paths:
        if not os.path.lexists(path):  # a missing layer is fine; a directory or unreadable file is not
            continue
        doc = load_yaml_file(path)
        found = list(doc.problems)  # duplicate keys, tags, keys that are not text
        try:
            Settings.model_validate(doc.data)  # validate each layer on its own: errors name the file
        except ValidationError as exc:
            found += validation_problems(exc, Settings, doc, str(path))
        problems += sorted_problems(found)
        merged = deep_merge(merged, doc.data)
    if problems:
        raise ConfigError(problems)
    return Settings.model_validate(merged)

