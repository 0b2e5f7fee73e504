"""Print trajscope's requirements (base dependencies plus the named extras), one per line.

Used by the Dockerfiles to install the dependencies in a layer of their own, before the trajscope
wheel, so that a change of trajscope's code does not reinstall them::

    python requirements.py pyproject.toml s3 distributed > requirements.txt

Extras that name trajscope itself (``trajscope[producer]``) are expanded.
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    """The dependencies of ``pyproject`` plus those of ``extras`` (self-references expanded)."""
    with open(pyproject, "rb") as fh:
        project = tomllib.load(fh)["project"]
    name, optional = project["name"], project.get("optional-dependencies", {})
    out: list[str] = list(project["dependencies"])
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"requirements.py: {name} has no extra {extra!r} (it has: {', '.join(optional)})")
        seen.add(extra)
        for req in optional[extra]:
            self_ref = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", req.replace(" ", ""))
            if self_ref:
                todo.extend(self_ref.group(1).split(","))
            elif req not in out:
                out.append(req)
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], [e for arg in sys.argv[2:] for e in arg.split(",") if e])))
