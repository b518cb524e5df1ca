"""The LLaMA-Factory room: the delegated engine, ``train.task: llamafactory``.

LLaMA-Factory's own trainer runs the job (``llamafactory-cli train`` on the resolved copy of the
user's YAML, once per node); the hall (:mod:`hpcft.worker`: the run folder, ranks and rendezvous,
the offline environment, the time-limit requeue, progress and metrics.json) is hpcft's, as for
the native room (:mod:`hpcft.worker.engines.native`). The login side wrote ``train:`` from the
YAML (:mod:`hpcft.core.llamafactory_delegate`).

* :mod:`.resolve`: the YAML LLaMA-Factory reads, in the run folder (staged paths, output_dir,
  resume, ddp_timeout) and its ``dataset_info.json``;
* :mod:`.launch`: the launcher's environment (FORCE_TORCHRUN, NNODES, NODE_RANK, ...) and the
  child process, stopped on the time-limit signal;
* :mod:`.logs`: its ``trainer_log.jsonl`` and ``all_results.json`` as hpcft's progress and metrics;
* :mod:`.task`: the phases, in the order every task has them.
"""
