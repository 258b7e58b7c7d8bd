"""``python -m ivy.schemas``: write each shipped schema's validator module again."""

from __future__ import annotations

from pathlib import Path

from ivy.schemas import NAMES, generated_source, module_name

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for name in NAMES:
        path = here / f"{module_name(name).rsplit('.', 1)[1]}.py"
        path.write_text(generated_source(name), encoding="utf-8")
        print(path)
