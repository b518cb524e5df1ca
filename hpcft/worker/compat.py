"""What differs between the library releases hpcft supports, as pure functions (no imports of them).

hpcft's worker runs on two lines of transformers (see ``pyproject.toml`` and "Supported
versions" in docs/training.md): the latest 4.x (4.57, what Python 3.10 or an older
torch/torch_npu stack gets) and 5.x. Every call whose arguments differ between them goes
through a function here that takes the version string, so both branches are tested on
any machine and the call sites stay one line.
"""

from __future__ import annotations

import re
from typing import Any


def version_tuple(version: str) -> tuple[int, ...]:
    """``"4.57.6"`` -> ``(4, 57, 6)``; local and pre-release tails are dropped
    (``"2.13.0+cpu"`` -> ``(2, 13, 0)``, ``"5.0.0.dev0"`` -> ``(5, 0, 0)``, ``"5.0.0rc1"`` -> ``(5, 0, 0)``)."""
    parts = []
    for piece in version.split("+", 1)[0].split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):  # "0rc1": the number, then a pre-release tag
            break
    if not parts:
        raise ValueError(f"not a version number: {version!r}")
    return tuple(parts)


def warmup_kwargs(warmup_ratio: float, transformers_version: str) -> dict[str, Any]:
    """The TrainingArguments warmup for ``train.warmup_ratio`` (a fraction of the total steps).

    - 5.x removed ``warmup_ratio``: ``warmup_steps`` below 1 is the fraction, 1 or more a step
      count; a ratio of 1.0 would mean one step, so it is capped just below 1.
    - 4.x: ``warmup_steps`` must be an int (4.57 raises on a float) and a float there would
      have meant no warmup before; the fraction goes to ``warmup_ratio``.
    """
    if not 0 <= warmup_ratio <= 1:
        raise ValueError(f"warmup_ratio must be between 0 and 1, got {warmup_ratio}")
    if version_tuple(transformers_version)[0] >= 5:
        return {"warmup_steps": min(float(warmup_ratio), 0.999)}
    return {"warmup_ratio": float(warmup_ratio)}


def training_args_kwargs(*, warmup_ratio: float, transformers_version: str) -> dict[str, Any]:
    """TrainingArguments keywords whose name or meaning depends on the transformers release.

    ``average_tokens_across_devices=False`` everywhere: the option exists from 4.46 on (so in
    every supported release) and defaults to True in 5.x, where transformers then scales the
    loss by the rank count for token-averaged LM losses; a sequence classifier's loss is
    already a per-batch mean, so that would multiply gradients by the ranks."""
    return {**warmup_kwargs(warmup_ratio, transformers_version), "average_tokens_across_devices": False}


TRAIN_EXTRAS = ("train", "deepspeed", "npu")


def out_of_range(requires: list[str], installed: dict[str, str]) -> list[str]:
    """One line per installed package outside the range hpcft declares for the worker.

    ``requires``: hpcft's requirement strings as its metadata lists them
    (``'torch>=2.6; extra == "train"'``); only the worker's extras count. ``installed``:
    normalised name -> version. The worker logs these as warnings at start, so a job in an
    environment CI never ran says so before the first traceback does."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    lines = []
    for text in requires:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is None or not req.specifier \
                or not any(req.marker.evaluate({"extra": e}) for e in TRAIN_EXTRAS):
            continue  # the login side's base install, or another extra
        name = canonicalize_name(req.name)
        version = installed.get(name)
        if version is None:
            continue
        try:
            ok = req.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            continue
        if not ok:
            lines.append(f"{req.name} {version} is outside the range hpcft supports ({req.specifier}); "
                         "see 'Supported versions' in docs/training.md")
    return lines


def installed_out_of_range() -> list[str]:
    """:func:`out_of_range` for this environment (nothing when hpcft is not installed, e.g. run
    from a source tree on ``PYTHONPATH``)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        declared = requires("hpcft") or []
    except PackageNotFoundError:
        return []
    installed = {}
    for text in declared:
        try:
            name = Requirement(text).name
            installed[canonicalize_name(name)] = version(name)
        except (InvalidRequirement, PackageNotFoundError):
            continue
    return out_of_range(declared, installed)
