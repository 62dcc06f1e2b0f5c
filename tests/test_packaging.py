"""The Dockerfile parses and installs this package; the package maps kernels/ and calibration/,
and a `python` started in the checkout finds PyPI's `kernels`, not the checkout's folder."""

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    assert not buf, "dangling line continuation"
    return out


def test_dockerfile_parses_and_installs_xopt():
    ins = dockerfile_instructions(ROOT / "Dockerfile")
    known = {"FROM", "RUN", "COPY", "WORKDIR", "ENTRYPOINT", "CMD", "ENV", "ARG", "LABEL", "VOLUME"}
    assert {i for i, _ in ins} <= known
    assert ins[0][0] == "FROM" and ins[0][1].startswith("nvcr.io/nvidia/pytorch:")
    # the base image's entrypoint runs the command given (`xopt demo`, `python -m pytest`)
    assert not [a for i, a in ins if i == "ENTRYPOINT"] and ("CMD", '["xopt", "--help"]') in ins
    copied = {shlex.split(a)[0] for i, a in ins if i == "COPY"}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for src in pyproject["tool"]["setuptools"]["package-dir"].values():
        assert any(src == c or src.startswith(c + "/") for c in copied), f"Dockerfile does not copy {src}/"
    run = " ".join(a for i, a in ins if i == "RUN")
    assert "pip install" in run and "iso-codes" in run
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


def test_wheel_installs_with_mapped_subpackages(tmp_path):
    import shutil

    # built from a copy of the sources: setuptools' build/ in the checkout may hold stale modules
    src = tmp_path / "src"
    src.mkdir()
    for part in ("pyproject.toml", "README.md", "xopt", "kernels", "calibration"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy2
        copy(ROOT / part, src / part, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / part).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "w"), str(src)], check=True)
    wheel = next((tmp_path / "w").glob("xopt-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "t"),
                    str(wheel)], check=True)
    # every package of the source tree is in the wheel (a package missing from pyproject's list
    # works in an editable install and fails in a plain one)
    import zipfile

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    sources = {name.replace(".", "/"): ROOT / src for name, src in pyproject["tool"]["setuptools"]["package-dir"].items()}
    wanted = {f"{name}/{d.relative_to(root).as_posix()}/__init__.py".replace("/./", "/")
              for name, root in sources.items() for d in [root, *root.rglob("*")]
              if d.is_dir() and (d / "__init__.py").is_file()}
    assert "xopt/importers/__init__.py" in wanted and "xopt/kernels/__init__.py" in wanted
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [n for n in names if n.startswith("kernels/")], "the wheel installs a top-level package `kernels`"
    missing = wanted - names
    assert not missing, f"packages missing from the wheel (pyproject [tool.setuptools] packages): {sorted(missing)}"
    code = ("import json, xopt, xopt.kernels, xopt.calibration, xopt.variants; "
            "print(json.dumps([xopt.kernels.__file__, xopt.calibration.__file__, sorted(xopt.variants.REGISTRY)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "t")},
                         capture_output=True, text=True, check=True)
    kern, calib, names = json.loads(out.stdout)
    assert kern.startswith(str(tmp_path / "t")) and calib.startswith(str(tmp_path / "t"))
    assert "onnx-int8" in names
    entry = (tmp_path / "t").glob("xopt-*.dist-info/entry_points.txt")
    assert "xopt = xopt.cli:main" in next(entry).read_text()


def _in_checkout_root(code: str, **env) -> subprocess.CompletedProcess:
    """`python -c CODE` started in the checkout's root, as a user's python is: sys.path[0] is the checkout."""
    import os

    full = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")} | env
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=300)


def test_checkout_root_does_not_shadow_a_package_named_kernels(tmp_path):
    """A regular package `kernels` anywhere on the path wins over the checkout's kernels/ folder."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("WHO = 'the installed one'\n")
    r = _in_checkout_root("import kernels; print(kernels.WHO, kernels.__file__)", PYTHONPATH=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("the installed one " + str(tmp_path)), r.stdout


def test_transformers_hub_kernels_import_in_checkout_root():
    """transformers >= 5.25 requires PyPI's `kernels` and imports it in its hub-kernels integration."""
    import importlib.metadata as md

    if not any(req.split()[0].startswith("kernels") for req in md.requires("transformers") or []):
        pytest.skip(f"transformers {md.version('transformers')} does not depend on PyPI's kernels")
    where = str(md.distribution("kernels").locate_file("kernels"))
    r = _in_checkout_root("import kernels, transformers.integrations.hub_kernels as h; "
                          "print(kernels.__file__); assert h.is_kernels_available()")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().startswith(where), r.stdout


def test_ci_runs_readme_command_2():
    """.ci/run reads set-up command 2 from README.md and runs it: it installs and tests nothing
    of its own, so a new user's test run is CI's."""
    import re

    root = Path(__file__).parent.parent
    ci = (root / ".ci" / "run").read_text()
    assert "## Set-up on a fresh machine" in ci and 'bash -c "$cmd"' in ci
    assert not re.search(r"^\s*(pip|python -m pytest|python3 -m venv)", ci, re.M)
    readme = (root / "README.md").read_text()
    cmd2 = re.findall(r"```sh\n(.*?)\n\s*```", readme[readme.index("## Set-up on a fresh machine"):], re.S)[1]
    assert cmd2.strip().endswith("python -m pytest") and "chromium-headless-shell" in cmd2


def _setup_commands() -> list[str]:
    import re

    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)\n\s*```", readme[readme.index("## Set-up on a fresh machine"):], re.S)[:2]


def test_readme_commands_install_what_ci_tested():
    """Both set-up commands install xopt with constraints.txt, so a fresh clone resolves the
    versions the suite passed with, not whatever PyPI holds that day."""
    for cmd in _setup_commands():
        pip = [part for part in cmd.split("&&") if part.strip().startswith("pip install")]
        assert len(pip) == 1 and shlex.split(pip[0])[-2:] == ["-c", "constraints.txt"], cmd


def _pins() -> dict[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def _resolved(extras: set[str]):
    """(requirement, distribution name) for every dependency that installing xopt[extras]
    resolves in this environment, walked through installed metadata with markers evaluated."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo, seen = [("xopt", frozenset(extras))], set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in wanted | {""}):
                continue
            dep = canonicalize_name(req.name)
            yield req, dep
            todo.append((dep, frozenset(req.extras)))


def test_constraints_pin_every_dependency_within_pyproject_ranges():
    """constraints.txt pins each distribution `pip install -e '.[test]'` (and `.[demo]`) pulls,
    at a version inside every range that asks for it, and this environment runs those versions
    (CI installs with the file; `.ci/latest` writes it from the venv it tests)."""
    from importlib import metadata

    from packaging.version import Version

    pins = _pins()
    reqs = list(_resolved({"test", "demo"}))
    assert {"torch", "transformers", "kernels", "onnxruntime"} <= {dep for _, dep in reqs}
    for req, dep in reqs:
        assert dep in pins, f"{dep} (from {req}) is not pinned in constraints.txt"
        assert req.specifier.contains(pins[dep], prereleases=True), f"{dep}=={pins[dep]} breaks {req}"
        installed = Version(metadata.version(dep))
        # the local label (torch's +cpu) names a build of the pinned release
        assert Version(installed.public) == Version(pins[dep]), (
            f"{dep} {installed} is installed, constraints.txt pins {pins[dep]}: run .ci/latest --write "
            "to move the pins on purpose, or reinstall with -c constraints.txt")
