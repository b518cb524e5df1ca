"""Servers a job runs on a node: the Gradio demo, the OpenAI-compatible API (transformers and
vLLM backends behind one authenticating front) and TensorBoard, all behind the run's password."""
