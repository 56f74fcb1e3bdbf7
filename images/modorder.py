#!/usr/bin/env python3
"""modorder.py MODULE_TREE NAME...: prints the .ko files needed to load the
named modules, in load order (every module after its dependencies), as read
from each module's own `depends=` field with modinfo. Names not found as
modules are assumed built into the kernel and skipped."""
import os
import subprocess
import sys

def main(tree: str, wanted: list[str]) -> int:
    index = {}
    for root, _, files in os.walk(tree):
        for f in files:
            if f.endswith(".ko"):
                index[f[:-3].replace("-", "_")] = os.path.join(root, f)
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        name = name.replace("-", "_")
        if state.get(name) == "done" or name not in index:
            return
        if state.get(name) == "visiting":
            sys.exit(f"modorder: dependency cycle: {' -> '.join(chain + [name])}")
        state[name] = "visiting"
        deps = subprocess.run(["modinfo", "-F", "depends", index[name]],
                              capture_output=True, text=True, check=True).stdout.strip()
        for dep in filter(None, deps.split(",")):
            visit(dep, chain + [name])
        state[name] = "done"
        order.append(index[name])

    for name in wanted:
        visit(name, [])
    print("\n".join(order))
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
