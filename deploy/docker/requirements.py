"""pyproject.toml's dependency lists as requirements files, for the Dockerfiles' dependency layers.

    python requirements.py pyproject.toml OUT_DIR

writes OUT_DIR/base.txt (the project's dependencies) and OUT_DIR/<extra>.txt for each optional group.
The images install from these before the source is copied, so a code edit never reinstalls torch;
they change only when pyproject.toml does. Standard library only: it runs on a bare Python image.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def main(pyproject: str, out_dir: str) -> None:
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = {"base": project["dependencies"], **project.get("optional-dependencies", {})}
    for name, requirements in groups.items():
        (out / f"{name}.txt").write_text("".join(f"{line}\n" for line in requirements))


if __name__ == "__main__":
    main(*sys.argv[1:])
