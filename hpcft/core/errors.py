"""Typed errors. Only :func:`hpcft.cli.main.main` turns them into exit codes."""

from __future__ import annotations


class HpcftError(Exception):
    """Base class: a problem the user can act on. ``exit_code`` is used by the CLI."""

    exit_code = 1

    def lines(self) -> list[str]:
        return [str(self)]


class ConfigError(HpcftError):
    """Invalid job file or configuration. Carries every problem found, one per line."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def lines(self) -> list[str]:
        return self.problems


class PreflightError(ConfigError):
    """The live cluster cannot run the job as written (partition, gres, time, account...)."""


class SlurmError(HpcftError):
    """A Slurm command failed or is missing."""


class NotFoundError(HpcftError):
    """A run or job id that hpcft does not know."""


class NotStagedError(HpcftError):
    """Assets a job needs are not in the cache; the message carries the stage command."""

    exit_code = 3


class StageError(HpcftError):
    """Staging from a hub failed (network, missing repo, bad hash, disk)."""


class TrustError(HpcftError):
    """A file in a shared place (the cache, a runs folder, a run-time cache) that another user could
    have written or swapped, so it is not used; the message names it and its owner."""
