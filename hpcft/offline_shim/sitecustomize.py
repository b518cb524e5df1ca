"""hpcft's import-time shim for jobs on offline compute nodes (stdlib only).

A job's ``PYTHONPATH`` starts with this folder (``hpcft.core.offline.offline_env``), so
Python runs this file at start-up. It imports nothing heavy: it registers a post-import
hook, and only when the script itself imports ``datasets`` does it wrap
``datasets.load_dataset`` / ``load_dataset_builder`` so that the names users type
(``load_dataset("glue", "mrpc")``, ``"nyu-mll/glue"``, ``"yelp_review_full"``) resolve to
the copy ``hpcft stage`` put in ``$HPCFT_CACHE``. Why: offline, ``datasets`` cannot map
a hub name to files without asking the hub (measured: "Couldn't reach 'glue' on the
Hub (OfflineModeIsEnabled)"), while loading the staged folder works and takes 0.1 s.
Models and metrics need no shim (hub-cache layout and evaluate's module cache suffice).

openMind hub (``openmind_hub``, the Modelers client): its ``snapshot_download`` and
``om_hub_download`` ask the hub whether the repo exists (``check_repo_exists``) before they
look at ``local_files_only`` -- a network call that fails on a node without internet. Offline,
the shim makes that check a no-op, so ``local_files_only=True`` resolves from the cache that
``XDG_CACHE_HOME`` points at (``hpcft.core.offline.openmind_env``), as the client intends. The
``openmind`` library's ``OmDataset.load_dataset("AI_Connect/glue", "cola")`` asks the hub
(``repo_info``) for any hub name, even with the data on disk: offline, a staged name becomes the
staged folder, exactly as for ``datasets.load_dataset``.

Active only when ``HPCFT_CACHE`` is set and ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``
is 1; ``HPCFT_SHIM=0`` turns it off. Names that are not staged, local paths and any
other call pass through untouched. A ``sitecustomize`` further down ``sys.path``
(conda, Debian) still runs.
"""

from __future__ import annotations

import os
import sys

try:
    from . import hpcft_trust  # imported as hpcft.offline_shim.sitecustomize
except ImportError:
    import hpcft_trust  # as a job's sitecustomize: this folder is on PYTHONPATH

_TRUE = ("1", "true", "yes", "on")


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


_WARNED: set = set()


def _warn_once(key: str, text: str) -> None:
    if key not in _WARNED and len(_WARNED) < 20:
        _WARNED.add(key)
        print(f"hpcft: {text}", file=sys.stderr)


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return f"uid {uid}"


def _manifests(kind: str) -> list:
    """The cache's trusted manifests of ``kind`` (hpcft_trust: a manifest another group member forged,
    planted, or bound to another asset's name is ignored, with one warning naming its owner)."""
    root = os.environ.get("HPCFT_CACHE", "")
    base = os.path.join(root, "manifests", kind)
    out = []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return out
    for n in names:
        if not n.endswith(".json"):
            continue
        path = os.path.join(base, n)
        data, why = hpcft_trust.read(path)
        why = why or hpcft_trust.problem(root, path, data)
        try:
            uid = os.lstat(path).st_uid
        except OSError:
            continue
        if why:
            _warn_once(path, f"ignored manifest {path} of {_owner_name(uid)}: {why}")
            continue
        out.append(dict(data, _owner=uid))
    return out


_TABLE: list = []


def _table() -> dict:
    """hpcft's own name table (read once per process)"""
    if not _TABLE:
        _TABLE.append(_read_table())
    return _TABLE[0]


def _read_table() -> dict:
    """hpcft's own name table for datasets (``hpcft/core/aliases.yaml``, shipped with hpcft):
    name -> repo id. Empty when PyYAML is missing from the job's Python."""
    try:
        import yaml

        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, os.pardir, "core", "aliases.yaml"), encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except (ImportError, OSError, ValueError) as exc:
        _warn_once("table", f"hpcft's dataset names are not readable here ({type(exc).__name__}); "
                            "only repo ids and your own aliases resolve")
        return {}
    out = {}
    for name, value in (data.get("datasets") or {}).items():
        rid = value.get("id") if isinstance(value, dict) else value
        if isinstance(rid, str):
            out[str(name)] = rid.split(":", 1)[0]
    return out


def _answering(name: str) -> list:
    """Trusted dataset manifests that answer to ``name``: the repo's own manifests; else those of
    the repo hpcft's name table gives the name; else those that claim it as an alias, the caller's
    own first, then root's. Another user's alias claim is not followed (they could claim ``glue``
    for a folder of theirs)."""
    ms = _manifests("dataset")
    direct = [m for m in ms if m.get("repo_id") == name]
    if direct:
        return direct
    rid = _table().get(name)
    via = [m for m in ms if rid and m.get("repo_id") == rid]
    if via:
        return via
    claims = [m for m in ms if name in (m.get("aliases") or [])]
    ranks = {hpcft_trust.rank(m["_owner"]) for m in claims}
    best = min(ranks) if ranks else 2
    for m in claims:
        if hpcft_trust.rank(m["_owner"]) == 2:
            _warn_once(f"alias:{name}:{m['repo_id']}", f"{m['repo_id']}, staged by {_owner_name(m['_owner'])}, "
                       f"claims the name {name!r}; not followed (stage it yourself, or use its repo id)")
    return [m for m in claims if hpcft_trust.rank(m["_owner"]) == best < 2]


def staged_dataset(path, name=None, revision=None):
    """(folder, config) of the staged copy for a typed dataset name, or None."""
    if not isinstance(path, str) or not path or os.path.exists(path) or not os.environ.get("HPCFT_CACHE"):
        return None
    typed = path
    if name is None and ":" in path:
        path, name = path.split(":", 1)
    cands = _answering(path)
    if revision is not None:
        cands = [m for m in cands if str(revision) in (m.get("revision"), m.get("sha"))]
    cands = [m for m in cands if os.path.isdir(str(m.get("path")))]
    if name is not None:
        cands = [m for m in cands if m.get("config") in (name, None, "default")]
        cands.sort(key=lambda m: m.get("config") != name)
    elif len(cands) > 1:
        cands = [m for m in cands if m.get("config") in (None, "default")]
    if not cands or (typed != path and name is None):
        return None
    m = cands[0]
    return m["path"], (name if name is not None else m.get("config"))


def staged_metric(path):
    """The staged script for a metric name (``glue``, ``evaluate-metric/glue``), or None: its
    own manifest, else one the caller or root staged under that alias. evaluate then copies the
    script into the caller's own module cache (``HF_MODULES_CACHE``, private), never a shared one."""
    if not isinstance(path, str) or not path or os.path.exists(path) or not os.environ.get("HPCFT_CACHE"):
        return None
    ms = _manifests("metric")
    ids = (path, f"evaluate-metric/{path}") if "/" not in path else (path,)
    cands = [m for rid in ids for m in ms if m.get("repo_id") == rid] or \
        sorted((m for m in ms if path in (m.get("aliases") or []) and hpcft_trust.rank(m["_owner"]) < 2),
               key=lambda m: hpcft_trust.rank(m["_owner"]))
    for m in cands:
        stem = m["repo_id"].rsplit("/", 1)[-1]
        for name in (f"{stem}.py", f"{stem.replace('-', '_')}.py"):
            script = os.path.join(m["path"], name)
            if os.path.isfile(script):
                return script
    return None


def _wrap_metric(fn):
    import functools

    @functools.wraps(fn)
    def load(path=None, *args, **kwargs):
        script = staged_metric(path) if _offline() else None
        if script is not None:
            print(f"hpcft: evaluate.load({path!r}) -> staged script {script}", file=sys.stderr)
            return fn(script, *args, **kwargs)
        return fn(path, *args, **kwargs)

    load.__hpcft_shim__ = True
    return load


def patch_evaluate(module) -> None:
    """``evaluate.load("glue")`` offline: the staged script (see :func:`staged_metric`)."""
    for owner in (module, sys.modules.get("evaluate.loading")):
        fn = getattr(owner, "load", None) if owner is not None else None
        if fn is not None and not getattr(fn, "__hpcft_shim__", False):
            owner.load = _wrap_metric(fn)


def _wrap(fn, what):
    import functools

    @functools.wraps(fn)
    def wrapper(path=None, name=None, *args, **kwargs):
        hit = staged_dataset(path, name, kwargs.get("revision")) if _offline() else None
        if hit is not None:
            folder, config = hit
            kwargs.pop("revision", None)
            print(f"hpcft: {what}({path!r}{', ' + repr(name) if name else ''}) -> staged copy {folder}",
                  file=sys.stderr)
            return fn(folder, config, *args, **kwargs)
        return fn(path, name, *args, **kwargs)

    wrapper.__hpcft_shim__ = True
    return wrapper


def _skip_when_offline(fn):
    import functools

    @functools.wraps(fn)
    def check_repo_exists(*args, **kwargs):
        if _offline():
            return None  # offline: no hub to ask; the cache lookup that follows decides
        return fn(*args, **kwargs)

    check_repo_exists.__hpcft_shim__ = True
    return check_repo_exists


def patch_openmind_hub(module) -> None:
    """Offline, openmind_hub's repo-existence check (a network call) is skipped."""
    fn = getattr(module, "check_repo_exists", None)
    if fn is not None and not getattr(fn, "__hpcft_shim__", False):
        module.check_repo_exists = _skip_when_offline(fn)


OM_MODULES = ("openmind_hub.plugins.openmind.file_download", "openmind_hub.plugins.openmind._snapshot_download")


def patch_openmind_datasets(module) -> None:
    """``openmind.integrations.datasets.load_dataset`` (and the name ``openmind.omdatasets`` bound)."""
    fn = getattr(module, "load_dataset", None)
    if fn is not None and not getattr(fn, "__hpcft_shim__", False):
        module.load_dataset = _wrap(fn, "openmind load_dataset")


def patch_datasets(module) -> None:
    load = sys.modules.get("datasets.load")
    for owner in (module, load):
        if owner is None:
            continue
        for attr in ("load_dataset", "load_dataset_builder"):
            fn = getattr(owner, attr, None)
            if fn is not None and not getattr(fn, "__hpcft_shim__", False):
                setattr(owner, attr, _wrap(fn, attr))


class _Loader:
    """Runs the real loader, then the hook; everything else is the real loader's."""

    def __init__(self, inner, hook):
        self._inner, self._hook = inner, hook

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        try:
            self._hook(module)
        except Exception as exc:  # the shim must never break the user's import
            print(f"hpcft: offline shim skipped ({type(exc).__name__}: {exc})", file=sys.stderr)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _PostImport:
    def __init__(self, hooks):
        self.hooks = hooks

    def find_spec(self, fullname, path=None, target=None):
        hook = self.hooks.get(fullname)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, hook)
                return spec
        return None

    def invalidate_caches(self):
        pass


def private_runtime() -> None:
    """``$HPCFT_RUNTIME`` (the user's run-time caches: HF_DATASETS_CACHE, HF_MODULES_CACHE, ...)
    exists and is 0700 before any library writes there, whatever the umask; one that belongs to
    somebody else is reported (the worker refuses to run with it)."""
    path = os.environ.get("HPCFT_RUNTIME")
    if not path:
        return
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if st.st_uid != os.getuid():
            _warn_once("runtime", f"{path} belongs to {_owner_name(st.st_uid)}, not you: the run-time caches "
                                  "there are not private; set HPCFT_HOME to a folder of your own")
        elif st.st_mode & 0o077:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)
    except OSError as exc:
        _warn_once("runtime", f"cannot make the private run-time folder {path} ({exc.strerror})")


def install() -> bool:
    """Register the hook (idempotent). Returns whether the shim is active."""
    if os.environ.get("HPCFT_SHIM", "1").lower() in ("0", "false", "no", "off") \
            or not os.environ.get("HPCFT_CACHE"):
        return False
    hooks = {"datasets": patch_datasets, "evaluate": patch_evaluate, **{name: patch_openmind_hub for name in OM_MODULES},
             "openmind.integrations.datasets": patch_openmind_datasets, "openmind.omdatasets": patch_openmind_datasets}
    for name, hook in hooks.items():
        if name in sys.modules:  # imported already (e.g. install() called late)
            hook(sys.modules[name])
    if not any(isinstance(f, _PostImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImport(hooks))
    return True


def _chain() -> None:
    """Run the next ``sitecustomize`` on sys.path, which this file shadows."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or os.path.abspath(str(spec.origin)) == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if __name__ == "sitecustomize":
    private_runtime()
    install()
    _chain()
