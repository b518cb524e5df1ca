"""A LLaMA-Factory ``dataset_info.json`` entry read as an hpcft dataset (login side, pure).

An entry maps when hpcft's readers take its rows as they are (its columns and tags are the ones
hpcft reads for that format); anything else is a reason naming LLaMA-Factory's engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

# named in every problem hpcft's native worker cannot run the same way: that engine runs it (engine: auto
# chooses it; engine: native refuses the key with this name)
ENGINE = "LLaMA-Factory's own engine (engine: llamafactory)"

# dataset_info.json fields hpcft reads; any other field of an entry needs the engine
_INFO_FIELDS = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "formatting", "columns", "tags",
                "ranking", "subset", "split", "num_samples", "folder")
# a dataset_info.json entry's columns/tags that hpcft's readers take as they are
_COLUMNS = {"alpaca": {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                       "history": "history"},
            "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"}}
_RANKING_COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "system": "system"}
_KTO_COLUMNS = {"prompt": "prompt", "response": "completion", "kto_tag": "label", "system": "system"}
_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
         "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}



def split_names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [n.strip() for n in value.split(",") if n.strip()]
    if isinstance(value, list):
        return [str(n).strip() for n in value if str(n).strip()]
    return []


def dataset_entry(name: str, spec: dict, folder: Path, task: str, problem: Callable[[str], None]) -> Optional[dict]:
    """One dataset_info.json entry as an hpcft dataset entry, or None (each problem reported)."""
    ok = True
    for key in spec:
        if key not in _INFO_FIELDS:
            problem(f"dataset_info.json field {key!r} needs {ENGINE}")
            ok = False
    for key in ("num_samples", "folder", "om_hub_url"):
        if key in spec and not (key == "om_hub_url" and ("hf_hub_url" in spec or "file_name" in spec)):
            problem(f"dataset_info.json field {key!r} needs {ENGINE}")
            ok = False
    formatting = spec.get("formatting", "alpaca")
    if formatting not in _COLUMNS:
        problem(f"formatting {formatting!r} needs {ENGINE}")
        return None
    columns = spec.get("columns") or {}
    ranking = bool(spec.get("ranking"))
    if task in ("dpo", "orpo", "simpo"):
        want = _RANKING_COLUMNS if ranking and formatting == "alpaca" else None
        if want is None:
            problem(f"preference rows in {formatting}{' ranking' if ranking else ''} form need {ENGINE}; "
                    "hpcft reads alpaca ranking rows with prompt/chosen/rejected columns")
            return None
    elif task == "kto":
        want = _KTO_COLUMNS if formatting == "alpaca" else None
        if want is None:
            problem(f"KTO rows in {formatting} form need {ENGINE}; hpcft reads prompt/completion/label columns")
            return None
    else:
        if ranking:
            problem(f"a ranking dataset is for stage: dpo or kto, not sft (needs {ENGINE})")
            return None
        want = _COLUMNS[formatting]
    for role, column in columns.items():
        if want.get(role) != column:
            problem(f"columns {role}: {column} needs {ENGINE} (hpcft reads {want.get(role) or 'no ' + role} "
                    f"for {formatting} rows)")
            ok = False
    if formatting == "sharegpt":
        tags = {**_TAGS, **(spec.get("tags") or {})}
        openai = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
        if all(tags[k] == v for k, v in openai.items()):  # the messages form, under any column name
            formatting = "messages"
            if columns.get("messages", "conversations") != "messages":
                problem(f"columns messages: {columns.get('messages', 'conversations')} with OpenAI tags needs "
                        f"{ENGINE} (hpcft reads a messages column)")
                ok = False
        else:
            for k, v in (spec.get("tags") or {}).items():
                if _TAGS.get(k) != v:
                    problem(f"tags {k}: {v} needs {ENGINE} (hpcft reads {_TAGS.get(k)})")
                    ok = False
    if "file_name" in spec:
        where = Path(str(spec["file_name"]))
        where = where if where.is_absolute() else folder / where
        if where.is_dir():
            problem(f"file_name {spec['file_name']} is a folder; a folder of files needs {ENGINE}")
            return None
        out: dict[str, Any] = {"name": str(where)}
    elif "hf_hub_url" in spec or "ms_hub_url" in spec:
        out = {"name": str(spec.get("hf_hub_url") or spec["ms_hub_url"])}
    else:
        problem(f"no file_name, hf_hub_url or ms_hub_url in its dataset_info.json entry (needs {ENGINE})")
        return None
    if spec.get("subset"):
        out["name"] += f":{spec['subset']}"
    if spec.get("split") and spec["split"] != "train":
        out["_split"] = str(spec["split"])
    if task == "causal-lm" and (formatting != "alpaca" or columns):
        out["data_format"] = formatting
    if task == "causal-lm" and formatting == "alpaca":
        out["alpaca_join"] = "\n"   # LLaMA-Factory's AlpacaDatasetConverter: "\n".join([instruction, input])
    return out if ok else None
