"""The folder a job's PYTHONPATH starts with: holds hpcft's ``sitecustomize`` (see there)."""

from pathlib import Path

SHIM_DIR = Path(__file__).resolve().parent
