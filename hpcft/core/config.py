"""Site and user settings, layered: cluster < user (< job file < --set, see :mod:`hpcft.core.job`).

* cluster config: ``$HPCFT_CONFIG`` or ``/etc/hpcft/config.yaml`` (written by cluster admins)
* user config:    ``$HPCFT_USER_CONFIG`` or ``$XDG_CONFIG_HOME/hpcft/config.yaml``
  (``~/.config/hpcft/config.yaml``)
* ``$HPCFT_HOME`` (default ``~/hpcft``) holds runs and, unless configured, the cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .yamlfile import deep_merge, load_yaml_file, sorted_problems, validation_problems

DEFAULT_CLUSTER_CONFIG = "/etc/hpcft/config.yaml"


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


class Scow(_Strict):
    """SCOW (OpenSCOW) placement: jobs land where the portal looks. Mirrors the admin's
    ``portal.yaml`` (``submitJobDefaultPwd``, ``savedJobsDir``; paths under ``$HOME``)."""

    enabled: Optional[bool] = None                 # None: on when ~/scow exists
    job_dir: str = "scow/jobs/{{ name }}"           # submitJobDefaultPwd
    saved_jobs_dir: str = "scow/savedJobs"          # savedJobsDir
    save_template: bool = False                     # write the portal's saved job on every submit


class Settings(_Strict):
    partitions: Partitions = Partitions()
    # partition used when a job asks for devices but names no partition
    default_partition: dict[Literal["gpu", "npu", "cpu"], str] = {}
    gpu_gres: str = "gpu:{n}"  # e.g. "gpu:a100:{n}" on clusters that type their GPUs
    npu_gres: str = "npu:{n}"
    cann_set_env: str = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
    hccl_env: dict[str, str] = {"HCCL_CONNECT_TIMEOUT": "1200", "HCCL_EXEC_TIMEOUT": "1200"}
    account: Optional[str] = None
    qos: Optional[str] = None
    cache_dir: Optional[Path] = None
    cache_group: Optional[str] = None
    # the user who looks after a shared cache: files they own are trusted by everybody (see
    # docs/staging.md, "Security model")
    cache_admin: Optional[str] = None
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

