"""
Run one side of one scenario in this fresh process:
``python _child.py MODULE FUNCTION`` with the keyword arguments as JSON on
stdin; the result is printed as JSON on the last line of stdout.

The benchmarks package is loaded from its file location and this script's
directory is taken off ``sys.path``, so ``txportend`` is imported from where
it is installed (the tox environment's wheel), never from the working tree.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys


def _load_package() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.util.spec_from_file_location(
        "benchmarks",
        os.path.join(here, "__init__.py"),
        submodule_search_locations=[here],
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks"] = package
    spec.loader.exec_module(package)


def main() -> None:
    module_name, function_name = sys.argv[1:3]
    params = json.loads(sys.stdin.read() or "{}")
    _load_package()
    module = importlib.import_module(f"benchmarks.{module_name}")
    result = getattr(module, function_name)(**params)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
