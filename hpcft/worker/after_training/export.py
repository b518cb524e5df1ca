"""``python -m hpcft.worker.after_training.export OUTPUT_DIR BASE_MODEL DEST [--merge] [--dtype D] [--trust-remote-code]``:
what ``hpcft export`` runs in a subprocess on the login node, or as a Slurm job with
``--submit`` (the CLI never imports torch).

``--merge`` folds a LoRA adapter into its base model (peft ``merge_and_unload``) and writes a
standalone model (safetensors + config + generation config + tokenizer + chat template) that
``AutoModelForCausalLM.from_pretrained(DEST)`` loads offline. Without it the adapter is copied as
it is (a delegated run's LLaMA-Factory records and ``checkpoint-N`` folders left out). A full
fine-tune is copied, or re-saved when its dtype is not the one asked for (the
Trainer saves its fp32 master weights; ``auto`` gives back the base model's bf16).

``--dtype auto`` (the default) is the base model's own dtype from its ``config.json``
(``dtype``, or ``torch_dtype`` before transformers 4.56; fp32 when it names none), so a bf16
Qwen/Llama stays bf16 (half the size of fp32); ``bf16``/``fp16``/``fp32`` choose. The base is
loaded in that dtype directly, so the merge needs about one copy of the model in memory.

A QLoRA adapter (``method: qlora``) is merged the same way: the base is loaded unquantized, in
its own dtype (never 4-bit), and the adapter folded into it, so the merged model is a plain
model that loads without bitsandbytes. A base whose ``config.json`` says it is quantized
(``quantization_config``) is refused: merging into it would not give a plain model.

DEST is written under a temporary name and renamed into place, so a failed export leaves
nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

COPY_SKIP = {"training_args.bin", "README.md",
             # a delegated run's output_dir is LLaMA-Factory's: its records and checkpoints beside the model
             "trainer_log.jsonl", "trainer_state.json", "all_results.json", "train_results.json", "eval_results.json",
             "training_loss.png", "training_eval_loss.png"}
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
NAMES = {v: k for k, v in DTYPES.items()}


def config_dtype(folder: Path) -> Optional[str]:
    """The torch dtype name a model folder's config.json gives (``bfloat16``, ...), or None."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for src in (cfg, cfg.get("text_config") or {}):
        value = src.get("dtype") or src.get("torch_dtype")
        if isinstance(value, str):
            return value.removeprefix("torch.")
    return None


def target_dtype(choice: str, base_model: Path) -> str:
    """``auto``: the base model's own dtype (fp32 when its config names none)."""
    if choice != "auto":
        return DTYPES[choice]
    found = config_dtype(base_model)
    return found if found in NAMES else "float32"


def export(output_dir: Path, base_model: Path, dest: Path, merge: bool, dtype: str = "auto",
           trust_remote_code: bool = False) -> Path:
    output_dir, dest = Path(output_dir), Path(dest)
    adapter = (output_dir / "adapter_config.json").is_file()
    want = target_dtype(dtype, base_model)
    tmp = dest.with_name(f".{dest.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if merge and adapter:
        from hpcft.core.quantization import model_quantization

        q = model_quantization(base_model)
        if q is not None:
            raise ValueError(f"{base_model} is quantized ({q.get('quant_method', 'unknown')}, config.json "
                             "quantization_config): --merge needs the unquantized base model")
    try:
        if merge and adapter:
            _merge(output_dir, base_model, tmp, want, trust_remote_code)
        elif not adapter and config_dtype(output_dir) not in (want, None):
            _resave(output_dir, tmp, want, trust_remote_code)
        else:
            _copy(output_dir, tmp)
        for p in tmp.rglob("*"):
            if p.is_file():
                p.chmod(0o644)  # safetensors writes 0600; exports are shared
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _merge(output_dir: Path, base_model: Path, tmp: Path, want: str, remote: bool) -> None:
    import torch
    from peft import PeftModel

    from hpcft.worker.engines.native.llm_model import load_model, load_tokenizer

    base = load_model(base_model, dtype=getattr(torch, want), trust_remote_code=remote)
    merged = PeftModel.from_pretrained(base, str(output_dir)).merge_and_unload()
    merged = merged.to(getattr(torch, want))  # adapter weights kept in fp32 by peft: one dtype throughout
    merged.save_pretrained(str(tmp), safe_serialization=True)
    load_tokenizer(output_dir, trust_remote_code=remote).save_pretrained(str(tmp))
    _generation_config(output_dir, base_model, tmp)
    _own_code(base_model, tmp)


def _resave(output_dir: Path, tmp: Path, want: str, remote: bool) -> None:
    """A full fine-tune in another dtype than asked (the Trainer saves fp32 master weights)."""
    import torch

    from hpcft.worker.engines.native.llm_model import load_model

    model = load_model(output_dir, dtype=getattr(torch, want), trust_remote_code=remote)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for p in output_dir.iterdir():  # tokenizer, chat template, generation config, the model's own code
        if p.is_file() and not p.name.startswith("model") and p.suffix != ".safetensors" \
                and p.name not in COPY_SKIP | {"config.json"} and not (tmp / p.name).exists():
            shutil.copy2(p, tmp / p.name)


def _copy(output_dir: Path, tmp: Path) -> None:
    for p in output_dir.iterdir():
        if p.name in COPY_SKIP or p.name == "best" or p.is_dir() and p.name.startswith("checkpoint-"):
            continue
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)


def _generation_config(output_dir: Path, base_model: Path, tmp: Path) -> None:
    """The run's own generation config when it saved one (its end-of-turn token as EOS), else
    the base model's; neither: the model's defaults apply."""
    for src in (output_dir, base_model):
        if (src / "generation_config.json").is_file():
            shutil.copy2(src / "generation_config.json", tmp / "generation_config.json")
            return


def _own_code(base_model: Path, tmp: Path) -> None:
    """A remote-code model's ``*.py`` beside its weights (``auto_map`` points at them)."""
    for p in Path(base_model).glob("*.py"):
        if not (tmp / p.name).exists():
            shutil.copy2(p, tmp / p.name)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcft.worker.after_training.export")
    ap.add_argument("output_dir", type=Path)
    ap.add_argument("base_model", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--dtype", choices=["auto", *DTYPES], default="auto")
    ap.add_argument("--trust-remote-code", action="store_true")
    args = ap.parse_args(argv)
    out = export(args.output_dir, args.base_model, args.dest, args.merge, args.dtype, args.trust_remote_code)
    print(out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
