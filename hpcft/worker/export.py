"""``python -m hpcft.worker.export OUTPUT_DIR BASE_MODEL DEST [--merge]``: what ``hpcft export``
runs in a subprocess (the CLI never imports torch).

``--merge`` folds a LoRA adapter into its base model (peft ``merge_and_unload``) and writes a
standalone model (safetensors + config + generation config + tokenizer + chat template) that
``AutoModelForCausalLM.from_pretrained(DEST)`` loads offline. Without it, or for a full
fine-tune, the trained folder is copied as it is. DEST is written under a temporary name and
renamed into place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

COPY_SKIP = {"training_args.bin", "README.md"}


def export(output_dir: Path, base_model: Path, dest: Path, merge: bool) -> Path:
    output_dir, dest = Path(output_dir), Path(dest)
    adapter = (output_dir / "adapter_config.json").is_file()
    tmp = dest.with_name(f".{dest.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if merge and adapter:
            import torch
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

            from .causal_lm import dtype_kw

            base = AutoModelForCausalLM.from_pretrained(str(base_model), **dtype_kw(torch.float32))
            merged = PeftModel.from_pretrained(base, str(output_dir)).merge_and_unload()
            dtype = getattr(base.config, "torch_dtype", None) or getattr(base.config, "dtype", None)
            if isinstance(dtype, str):
                dtype = getattr(torch, dtype, None)
            if isinstance(dtype, torch.dtype) and dtype != torch.float32:
                merged = merged.to(dtype)  # the base model's own precision (bf16 for Llama/Qwen)
            merged.save_pretrained(str(tmp), safe_serialization=True)
            AutoTokenizer.from_pretrained(str(output_dir)).save_pretrained(str(tmp))
            try:
                GenerationConfig.from_pretrained(str(base_model)).save_pretrained(str(tmp))
            except OSError:
                pass  # the base has no generation_config.json: the model's defaults apply
        else:
            for p in output_dir.iterdir():
                if p.name in COPY_SKIP or p.name == "best":
                    continue
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
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


def main(argv: list[str]) -> int:
    merge = "--merge" in argv
    rest = [a for a in argv if a != "--merge"]
    if len(rest) != 3:
        print("usage: python -m hpcft.worker.export OUTPUT_DIR BASE_MODEL DEST [--merge]", file=sys.stderr)
        return 2
    out = export(Path(rest[0]), Path(rest[1]), Path(rest[2]), merge)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
