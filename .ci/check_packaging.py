"""
Build the sdist and the wheel, check what they hold, and try the wheel in a
fresh virtual environment.

    python .ci/check_packaging.py WORKDIR

Run by ``tox -e packaging`` (which provides ``build`` and ``twine``). WORKDIR
receives the built distributions (``WORKDIR/dist``), the virtual environment
(``WORKDIR/venv``: the wheel, then its test extra to collect the unpacked
sdist's tests) and the unpacked sdist (``WORKDIR/sdist``). Every check
prints one ``ok`` or ``FAIL`` line; the exit code is 1 when any check failed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "txportend"
#: The twistd plugin, once there is one: a module in twisted/plugins/, with no
#: __init__.py (twisted.plugins is Twisted's own namespace).
DROPIN = "twisted/plugins/txportend_dropin.py"
#: The twistd subcommand the plugin provides.
TAPNAME = "portend"
#: The license text, shipped in both distributions.
LICENSE = "LICENSE"
#: The test tree, shipped in the sdist so that its tests run from it.
TESTS = "tests"
#: What must never be in a distribution: Twisted's plugin cache (written into
#: the working tree whenever plugins are looked up) and __init__.py files that
#: would replace Twisted's own packages when installed.
FORBIDDEN = ("twisted/__init__.py", "twisted/plugins/__init__.py")

failures: list[str] = []


def ok(message: str) -> None:
    print(f"ok: {message}")


def fail(message: str) -> None:
    print(f"FAIL: {message}")
    failures.append(message)


def check(condition: bool, message: str, problem: str = "") -> None:
    if condition:
        ok(message)
    else:
        fail(f"{message}{': ' + problem if problem else ''}")


def run(
    command: Sequence[str | Path],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing it; its output is captured."""
    words = [str(word) for word in command]
    print("$", " ".join(words), flush=True)
    return subprocess.run(words, capture_output=True, text=True, cwd=cwd, env=env)


def show(done: subprocess.CompletedProcess[str]) -> None:
    """Print a failed command's output, indented."""
    for line in (done.stdout + done.stderr).splitlines()[-40:]:
        print("    " + line)


def version() -> str:
    text = (ROOT / PACKAGE / "_version.py").read_text(encoding="utf-8")
    found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
    if found is None:
        sys.exit(f"FAIL: no __version__ in {PACKAGE}/_version.py")
    return found.group(1)


def source_modules() -> set[str]:
    """The package's modules in the source tree, as wheel paths."""
    return {path.relative_to(ROOT).as_posix() for path in (ROOT / PACKAGE).glob("*.py")}


def build(dist: Path) -> tuple[Path, Path] | None:
    if dist.exists():
        shutil.rmtree(dist)
    done = run([sys.executable, "-m", "build", "--outdir", dist, ROOT])
    if done.returncode != 0:
        show(done)
        fail("python -m build: the sdist and wheel did not build")
        return None
    sdists = sorted(dist.glob("*.tar.gz"))
    wheels = sorted(dist.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        found = [path.name for path in dist.iterdir()]
        fail(f"expected one sdist and one wheel, got {found}")
        return None
    ok(f"built {sdists[0].name} and {wheels[0].name}")
    return sdists[0], wheels[0]


def check_names(
    kind: str, names: set[str], expected_version: str, filename: str
) -> None:
    """What both distributions must and must not hold (paths package-relative)."""
    check(
        f"{PACKAGE}/py.typed" in names,
        f"{kind} has {PACKAGE}/py.typed",
        "missing: type checkers would ignore the package's annotations",
    )
    caches = sorted(n for n in names if n.rsplit("/", 1)[-1] == "dropin.cache")
    check(not caches, f"{kind} has no dropin.cache", f"found {caches}")
    for forbidden in FORBIDDEN:
        check(
            forbidden not in names,
            f"{kind} has no {forbidden}",
            "it would shadow Twisted's own package when installed",
        )
    if (ROOT / DROPIN).exists():
        check(DROPIN in names, f"{kind} has the twistd plugin {DROPIN}", "missing")
    missing = sorted(source_modules() - names)
    check(not missing, f"{kind} has every module of {PACKAGE}/", f"missing {missing}")
    check(
        f"-{expected_version}" in filename,
        f"{kind} is version {expected_version}",
        f"named {filename}",
    )


def check_license(kind: str, text: bytes | None) -> None:
    """The distribution carries the project's LICENSE, as it is in the tree."""
    source = ROOT / LICENSE
    expected = source.read_bytes() if source.exists() else None
    if text is None:
        problem = "missing"
    elif expected is None:
        problem = f"the source tree has no {LICENSE}"
    else:
        problem = "it differs from the source tree's"
    check(
        text is not None and text == expected, f"{kind} has the {LICENSE} file", problem
    )


def check_wheel(wheel: Path, expected_version: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        # Where PEP 639 puts it (Metadata 2.4); older backends used the
        # .dist-info directory itself.
        dist_info = f"{PACKAGE}-{expected_version}.dist-info"
        licenses = [f"{dist_info}/licenses/{LICENSE}", f"{dist_info}/{LICENSE}"]
        found = [name for name in licenses if name in names]
        check_license("the wheel", archive.read(found[0]) if found else None)
    check_names("the wheel", names, expected_version, wheel.name)
    plugin = (ROOT / DROPIN).exists()
    allowed = {DROPIN} if plugin else set()
    stray = sorted(
        n
        for n in names
        if n not in allowed and not n.startswith((f"{PACKAGE}/", f"{PACKAGE}-"))
    )
    installs = "the package and its twistd plugin" if plugin else "the package"
    check(not stray, f"the wheel installs nothing but {installs}", f"found {stray}")


def check_sdist(sdist: Path, expected_version: str) -> None:
    with tarfile.open(sdist) as archive:
        # Drop the leading "<name>-<version>/".
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
        top = archive.getnames()[0].split("/", 1)[0]
        try:
            member = archive.extractfile(f"{top}/{LICENSE}")
        except KeyError:
            member = None
        check_license("the sdist", member.read() if member else None)
    check_names("the sdist", names, expected_version, sdist.name)
    tests = {path.relative_to(ROOT).as_posix() for path in (ROOT / TESTS).glob("*.py")}
    missing = sorted(tests - names)
    check(
        not missing,
        f"the sdist has every module of {TESTS}/ (conftest, fakes, the tests)",
        f"missing {missing}",
    )


def twine_check(paths: Sequence[Path]) -> None:
    done = run([sys.executable, "-m", "twine", "check", "--strict", *paths])
    if done.returncode != 0:
        show(done)
    check(done.returncode == 0, "twine check --strict passes on both")


def try_wheel(wheel: Path, venv: Path, expected_version: str) -> Path | None:
    """
    Install the wheel in a fresh virtual environment and run it there; return
    the environment's python, or None when the wheel did not install.
    """
    if venv.exists():
        shutil.rmtree(venv)
    done = run([sys.executable, "-m", "venv", venv])
    if done.returncode != 0:
        show(done)
        fail("could not create a virtual environment")
        return None
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    done = run([python, "-m", "pip", "install", "--quiet", wheel])
    if done.returncode != 0:
        show(done)
        fail("pip install of the wheel failed")
        return None
    ok("the wheel installs in a fresh virtual environment")

    # Run outside the source tree, so that only the installed copy can be
    # imported.
    outside_env = {**os.environ, "PYTHONPATH": ""}
    commands: list[tuple[list[str | Path], str]] = [
        ([python, "-m", PACKAGE, "--help"], f"python -m {PACKAGE} --help"),
        ([bin_dir / PACKAGE, "--help"], f"the console script: {PACKAGE} --help"),
    ]

    where_is = f"import {PACKAGE}; print({PACKAGE}.__file__)"
    done = run([python, "-c", where_is], cwd=venv, env=outside_env)
    where = Path(done.stdout.strip() or ".").resolve()
    check(
        done.returncode == 0 and venv.resolve() in where.parents,
        f"{PACKAGE} imports from the virtual environment",
        (done.stderr.strip().splitlines() or [f"imported from {where}"])[-1],
    )

    for command, name in commands:
        try:
            done = run(command, cwd=venv, env=outside_env)
        except OSError as error:
            fail(f"{name}: {error}")
            continue
        if done.returncode != 0:
            show(done)
        check(
            done.returncode == 0 and "occupied" in done.stdout,
            f"{name} exits 0 with the usage",
            f"exit code {done.returncode}",
        )

    done = run([bin_dir / PACKAGE, "--version"], cwd=venv, env=outside_env)
    check(
        done.returncode == 0 and expected_version in done.stdout,
        f"{PACKAGE} --version says {expected_version}",
        f"exit code {done.returncode}, output {done.stdout.strip()!r}",
    )

    if (ROOT / DROPIN).exists():
        done = run([bin_dir / "twistd", TAPNAME, "--help"], cwd=venv, env=outside_env)
        if done.returncode != 0:
            show(done)
        check(done.returncode == 0, f"twistd {TAPNAME} --help exits 0 (plugin found)")
    return python


def collect_sdist_tests(sdist: Path, wheel: Path, python: Path, where: Path) -> None:
    """
    Unpack the sdist and collect its tests (pytest --collect-only, which
    imports every test module, conftest and helper) in the virtual environment
    with the wheel's test extra added: the sdist's test tree is complete.
    Collecting, not running, keeps this to seconds.
    """
    done = run([python, "-m", "pip", "install", "--quiet", f"{wheel}[test]"])
    if done.returncode != 0:
        show(done)
        fail("pip install of the wheel's test extra failed")
        return
    if where.exists():
        shutil.rmtree(where)
    with tarfile.open(sdist) as archive:
        top = where / archive.getnames()[0].split("/", 1)[0]
        if hasattr(tarfile, "data_filter"):
            archive.extractall(where, filter="data")
        else:  # Python < 3.10.12 / 3.11.4: no extraction filters
            archive.extractall(where)
    # Without arguments pytest collects its configured testpaths (the tests
    # and the package's doctests), as a user running pytest there would.
    done = run(
        [python, "-m", "pytest", "--collect-only", "-q"],
        cwd=top,
        env={**os.environ, "PYTHONPATH": ""},
    )
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    if done.returncode != 0:
        show(done)
    check(
        done.returncode == 0 and " collected" in summary and "error" not in summary,
        f"the sdist's tests collect ({summary or 'no summary'})",
        f"exit code {done.returncode}",
    )


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    workdir = Path(argv[0]).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    expected_version = version()
    built = build(workdir / "dist")
    if built is not None:
        sdist, wheel = built
        check_wheel(wheel, expected_version)
        check_sdist(sdist, expected_version)
        twine_check([sdist, wheel])
        python = try_wheel(wheel, workdir / "venv", expected_version)
        if python is not None:
            collect_sdist_tests(sdist, wheel, python, workdir / "sdist")
    print()
    if failures:
        print(f"{len(failures)} packaging check(s) failed:")
        for message in failures:
            print(f"  - {message}")
        return 1
    print("all packaging checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
