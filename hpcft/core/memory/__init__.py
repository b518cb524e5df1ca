"""What a training job needs in memory, per device and per node, from the model's ``config.json``
and how the job trains: pure arithmetic, shared by the login side (the memory pre-flight,
``partition: auto``) and the worker (``gradient_checkpointing`` left to hpcft)."""
