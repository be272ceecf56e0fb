"""
Sphinx configuration for the txportend documentation.

Build with warnings as errors and every reference checked::

    sphinx-build -W --keep-going -n -b html docs <outdir>
    sphinx-build -W --keep-going -n -b doctest docs <outdir>

(``tox -e docs`` runs both.)
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import zlib
from pathlib import Path
from typing import Any

import txportend

DOCS = Path(__file__).resolve().parent

project = "txportend"
author = "the txportend developers"
copyright = "the txportend developers"
release = txportend.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
]

exclude_patterns = ["_build"]

# Pages may be Markdown (the benchmark results, docs/performance.md, are
# written by the benchmark suite's maintainers in Markdown), read by MyST.
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
if importlib.util.find_spec("myst_parser") is not None:
    extensions.append("myst_parser")
elif any(DOCS.glob("*.md")):
    raise RuntimeError(
        "docs/ has Markdown pages: install myst-parser (it belongs in the "
        "'docs' extra in pyproject.toml)"
    )
nitpicky = True
html_theme = "furo"
html_title = f"txportend {release}"

# -- autodoc -------------------------------------------------------------------

autodoc_member_order = "bysource"
# Show defaults as written in the source (``timeout=math.inf``,
# ``interval=default_interval``), not as their reprs.
autodoc_preserve_defaults = True

# -- intersphinx ---------------------------------------------------------------
#
# The build sends nothing over the network: each project's inventory is
# compiled from _inventories/<name>.txt, a plain-text list of just the names
# these docs refer to, each with its real location in that project's
# documentation, so the links in the built pages are the real ones. A
# reference to a name missing from the list fails the build (nitpicky), which
# is how the list is kept complete. To add a name, copy its line from
# ``python -m sphinx.ext.intersphinx <url>/objects.inv``.

intersphinx_mapping: dict[str, tuple[str, Any]] = {
    "python": ("https://docs.python.org/3", None),
    "twisted": ("https://docs.twisted.org/en/stable/api", None),
}
intersphinx_timeout = 10


def compile_inventory(source: Path, target: Path, project: str) -> None:
    """
    Write a Sphinx (version 2) ``objects.inv`` from a text list whose lines
    read ``name domain:role location``; blank lines and ``#`` comments are
    skipped.
    """
    entries = []
    for line in source.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, role, location = line.split()
            entries.append(f"{name} {role} 1 {location} -\n")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project} (txportend's offline fallback)\n"
        "# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(header.encode() + zlib.compress("".join(entries).encode()))


def add_fallback_inventories(app: Any, config: Any) -> None:
    """
    Compile the fallback inventories into the build's doctree directory and
    add each as the second location to try for its project.

    Runs on ``config-inited`` before intersphinx reads the mapping.
    """
    for name, (url, location) in list(config.intersphinx_mapping.items()):
        source = DOCS / "_inventories" / f"{name}.txt"
        if location is not None or not source.exists():
            continue
        target = Path(app.doctreedir) / "_inventories" / f"{name}.inv"
        compile_inventory(source, target, name)
        # Only the local inventory: the build sends nothing over the network
        # (CI and the docs' own examples stay on loopback).
        config.intersphinx_mapping[name] = (url, str(target))


# -- the API reference stays complete -------------------------------------------

#: Modules whose ``__all__`` must be documented in full (a module that does
#: not exist yet is skipped).
PUBLIC_MODULES = ["txportend", "txportend.blocking"]


def check_public_names(app: Any, env: Any) -> None:
    """Warn (an error under ``-W``) for a public name the docs leave out."""
    from sphinx.util import logging

    documented = set(env.get_domain("py").objects)
    for module_name in PUBLIC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in getattr(module, "__all__", []):
            if name.startswith("__"):
                continue
            if f"{module_name}.{name}" not in documented:
                logging.getLogger(__name__).warning(
                    "%s.%s is public but not in the API reference", module_name, name
                )


# -- zope.interface in signatures -----------------------------------------------

_INTERFACE_REPR = re.compile(r"<InterfaceClass ([\w.]+)>")


def name_interfaces(
    app: Any,
    what: str,
    name: str,
    obj: object,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None]:
    """
    Write ``<InterfaceClass a.b.IFoo>`` in a signature as ``a.b.IFoo``.

    zope.interface's interfaces have no ``__qualname__``, so Sphinx renders an
    interface used in a type hint (``reactor: IPortendReactor | None``) by its
    repr, which is neither readable nor a link.
    """

    def fix(text: str | None) -> str | None:
        return None if text is None else _INTERFACE_REPR.sub(r"~\1", text)

    return fix(signature), fix(return_annotation)


# -- doctest --------------------------------------------------------------------

# Only the pages' own ``testcode``/``doctest`` directives run here. The ``>>>``
# examples in docstrings are run by pytest (``--doctest-modules``), in their
# module's namespace; run here they would lack it.
doctest_test_doctest_blocks = ""

# The examples under docs/examples/ are whole programs; the pages show them
# with literalinclude and run them with EXAMPLES / "name.py".
doctest_global_setup = f"""
from pathlib import Path
EXAMPLES = Path({str(DOCS / "examples")!r})
"""


def setup(app: Any) -> dict[str, Any]:
    app.connect("config-inited", add_fallback_inventories)
    app.connect("env-check-consistency", check_public_names)
    app.connect("autodoc-process-signature", name_interfaces)
    return {"parallel_read_safe": True}
