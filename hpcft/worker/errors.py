"""The worker's errors: one base, :class:`WorkerError`, under the login side's
:class:`hpcft.core.errors.HpcftError` (a problem the user can act on, with a message that says
how).

Each error also keeps the built-in base it always had (``ValueError``, ``RuntimeError``,
``OSError``, ``FloatingPointError``), so code that catches those still catches it. How a
failure is reported does not depend on the class: :func:`hpcft.worker.runtime.run_guarded`
prints the type and the message, records it in ``progress.jsonl`` and ``status.json``, and
re-raises (the process exits non-zero; a standalone ``python -m hpcft.worker.after_training.predict`` exits 2
on a :class:`PredictError`).
"""

from __future__ import annotations

from hpcft.core.errors import HpcftError


class WorkerError(HpcftError):
    """Base class of every error the compute side raises on purpose."""


class DeviceError(WorkerError, RuntimeError):
    """The job's device cannot be used (torch_npu missing, no CUDA, a precision it lacks)."""


class DataError(WorkerError, ValueError):
    """A classification dataset hpcft cannot train on (columns, labels, splits)."""


class DataFormatError(WorkerError, ValueError):
    """Instruction data for causal-lm in no format hpcft reads, or nothing left to train on."""


class NaNLossError(WorkerError, FloatingPointError):
    """The training loss became NaN or infinite; the message says what to change."""


class CheckpointWriteError(WorkerError, OSError):
    """Writing a checkpoint failed; the message says which one survives."""


class TrackerMissing(WorkerError, RuntimeError):
    """``train.report_to`` names a tracker the job's Python cannot import."""


class QuantizationMissing(WorkerError, RuntimeError):
    """``train.method: qlora`` but the job's Python cannot import bitsandbytes."""


class ScriptFailed(WorkerError, RuntimeError):
    """A ``script:`` job's own script exited non-zero."""


class PredictError(WorkerError, RuntimeError):
    """Bad input to ``hpcft predict`` (a line that is not JSON, no text field)."""
