"""Print the requirements of hpcft[EXTRAS] (pyproject.toml), one a line, the extras that name
hpcft[...] again expanded: scripts/setup installs them in each venv side by side, and only hpcft's
own editable build one venv at a time (it writes its egg-info into this folder).

    python3 devtools/extras_reqs.py train,deepspeed,dev
"""

import re
import sys
from pathlib import Path

import tomllib


def requirements(extras: list[str], pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    table = project.get("optional-dependencies", {})
    out, seen = list(project.get("dependencies", [])), set()

    def add(name: str) -> None:
        if name in seen:
            return
        if name not in table:
            raise SystemExit(f"extras_reqs: hpcft has no extra {name!r}")
        seen.add(name)
        for req in table[name]:
            own = re.fullmatch(r"hpcft\[([^\]]+)\]", req.replace(" ", ""))
            if own:
                for inner in own.group(1).split(","):
                    add(inner)
            else:
                out.append(req)

    for extra in extras:
        add(extra)
    return list(dict.fromkeys(out))


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    print("\n".join(requirements([e for e in sys.argv[1].split(",") if e], root / "pyproject.toml")))
