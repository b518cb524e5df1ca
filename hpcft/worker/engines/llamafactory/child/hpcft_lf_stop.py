"""The time-limit stop inside ``llamafactory-cli train``'s processes, as hpcft's own tasks have it
(:mod:`hpcft.worker.callback`): the step in progress ends, every rank saves its part of a
checkpoint of that step, and the ranks exit; the requeued job resumes at that step.

* :func:`install` (from :mod:`sitecustomize`, in the launcher, torchrun and every rank): Slurm's
  ``USR2`` reaches every process of the job step (proctrack linuxproc and cgroup), and its default
  action would kill them before anything is saved; here it only records the request.
* The worker forwards the signal as a file (``HPCFT_LF_STOP_FILE``): torchrun starts each rank in
  a session of its own, which a signal to the launcher's session does not reach.
* :func:`add_callback` (once ``transformers.trainer`` is imported): every Trainer gets
  :class:`StopAtSignal`. At each optimizer step's end the ranks agree (one all-reduce, the max
  of their flags: a rank alone would leave the others waiting in the save's collectives); then
  the Trainer saves ``checkpoint-N`` and stops, and the ranks exit (status 0) once every rank
  has written its part, before LLaMA-Factory's final save, evaluation and metrics, which belong
  to the leg that completes. ``save_steps`` checkpoints are saved as before.

Stdlib only at import; torch and hpcft's worker helpers are imported by the callback.
"""

import functools
import os
import signal
import sys

STOP_FILE_ENV = "HPCFT_LF_STOP_FILE"
_seen = []   # the signal's number once this process received it


def _on_signal(signum, frame):
    _seen.append(signum)


def install() -> None:
    """The time-limit signal only records the request in this process (it no longer kills it)."""
    signum = getattr(signal, "SIGUSR2", None)
    if signum is not None:
        signal.signal(signum, _on_signal)


def requested() -> bool:
    """Whether this process received the time-limit signal, or hpcft's worker forwarded it."""
    if _seen:
        return True
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and os.path.exists(path)


def _collective_device(args):
    """Where the stop flag lives: the rank's device for nccl/hccl, the CPU for gloo."""
    device = getattr(args, "device", None)
    return device if getattr(device, "type", "cpu") in ("cuda", "npu") else None


def _say(args, text: str) -> None:
    if getattr(args, "process_index", 0) == 0:
        print(f"hpcft: {text}", flush=True)


def make_callback():
    from transformers import TrainerCallback

    from hpcft.worker.collective import agree_on_stop, barrier

    class StopAtSignal(TrainerCallback):
        """Save at the end of the step in progress when the time-limit signal came, then stop."""

        def __init__(self):
            self.stopping = False

        def on_step_end(self, args, state, control, **kw):
            if not self.stopping and agree_on_stop(requested(), _collective_device(args)):
                self.stopping = True
                control.should_save = True
                control.should_training_stop = True
                _say(args, f"time-limit signal: saving checkpoint-{state.global_step} in {args.output_dir}, "
                           "then stopping (the requeued job resumes at this step)")
            return control

        def on_epoch_end(self, args, state, control, **kw):
            if self.stopping:   # saved at the step already; no evaluation in the grace period
                control.should_save = False
                control.should_evaluate = False
            return control

        def on_save(self, args, state, control, **kw):
            if self.stopping:
                barrier()   # every rank's part (RNG states, DeepSpeed shards) is on disk
                _say(args, f"saved checkpoint-{state.global_step} at the time-limit signal")
            return control

        def on_train_end(self, args, state, control, **kw):
            if self.stopping:
                barrier()
                _say(args, f"stopped at step {state.global_step} for the requeue")
                sys.stdout.flush()
                raise SystemExit(0)
            return control

    return StopAtSignal()


def add_callback(trainer_module) -> None:
    """Every ``transformers.Trainer`` (LLaMA-Factory's trainers are its subclasses) gets the callback."""
    cls = trainer_module.Trainer
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(make_callback())

    cls.__init__ = __init__
