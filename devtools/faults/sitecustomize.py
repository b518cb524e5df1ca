"""Test-only fault injection into the hpcft worker (never shipped, never read by the product).

A test puts this folder on the job's PYTHONPATH (hpcft's offline shim runs first and chains to
this ``sitecustomize``) and says what to inject in ``HPCFT_TEST_FAULTS``, comma-separated:

    step_sleep=0.1     sleep after every optimizer step (rehearse time limits on tiny models)
    fail_rank=2@3      rank 2 raises at step 3 (rehearse how a failing rank is reported)
    cpu_fallback=1     a GPU job trains on the CPU when torch sees no CUDA (fake-gres test clusters)
    pause_at=40        the first run (not a requeued one) stops at step 40 until it gets the
                       time-limit signal (at most 300 s), after writing ``test-fault-paused`` (the
                       step) into the run folder: a test signals when that file appears, and the
                       job cannot finish first however busy the machine is
    tokenize_sleep=3   whoever builds the tokenized data cache (hpcft.worker.data.cache) sleeps
                       that long after tokenizing, holding its lock: the other ranks wait on it

Use :func:`devtools.faults.fault_env` to build the variables.
"""

import os


def _spec() -> dict:
    out = {}
    for item in os.environ.get("HPCFT_TEST_FAULTS", "").split(","):
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _install(spec: dict) -> None:
    from hpcft.worker import device, runtime

    if spec.get("cpu_fallback") == "1":
        real = device.kind_for

        def kind_for(requested: str) -> str:
            if requested == "gpu":
                import torch

                if not torch.cuda.is_available():
                    print("hpcft: [test fault] no CUDA: this GPU job trains on the CPU with gloo", flush=True)
                    return "cpu"
            return real(requested)

        device.kind_for = kind_for

    tokenize_s = float(spec.get("tokenize_sleep", "0") or 0)
    if tokenize_s:
        from hpcft.worker.data import cache as data_cache

        real_load = data_cache.load_sft_data

        def slow_load(*a, **kw):
            import time

            out = real_load(*a, **kw)
            print(f"hpcft: [test fault] tokenized; holding the cache lock {tokenize_s:g} s", flush=True)
            time.sleep(tokenize_s)
            return out

        data_cache.load_sft_data = slow_load

    sleep_s = float(spec.get("step_sleep", "0") or 0)
    which, _, at = spec.get("fail_rank", "").partition("@")
    pause_at = int(spec.get("pause_at", "0") or 0)
    if not sleep_s and not which and not pause_at:
        return

    def factory(ctx):
        import time

        from transformers import TrainerCallback

        fail_at = int(at or 1) if which.isdigit() and int(which) == ctx.task.rank else None

        class Faults(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if sleep_s:
                    time.sleep(sleep_s)
                if pause_at and ctx.restart == 0 and state.global_step == pause_at:
                    from hpcft.worker.timelimit import SignalState

                    marker = ctx.paths.dir / "test-fault-paused"   # devtools.faults.PAUSED
                    marker.write_text(f"{pause_at}\n")
                    print(f"hpcft: [test fault] paused at step {pause_at} until the time-limit signal", flush=True)
                    deadline = time.monotonic() + 300
                    while not SignalState.requested and time.monotonic() < deadline:
                        time.sleep(0.05)
                if fail_at is not None and state.global_step >= fail_at:
                    raise RuntimeError(f"injected failure at step {state.global_step} (test fault fail_rank)")
                return control

        return Faults()

    runtime.EXTRA_CALLBACKS.append(factory)


_faults = _spec()
if _faults:
    _install(_faults)
