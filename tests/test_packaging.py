"""The Dockerfile parses and installs this package; the package maps kernels/ and calibration/."""

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

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
        assert src in copied, f"Dockerfile does not copy {src}/"
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

    sources = {"xopt": ROOT / "xopt", "xopt/kernels": ROOT / "kernels", "xopt/calibration": ROOT / "calibration"}
    wanted = {f"{name}/{d.relative_to(root).as_posix()}/__init__.py".replace("/./", "/")
              for name, root in sources.items() for d in [root, *root.rglob("*")]
              if d.is_dir() and (d / "__init__.py").is_file()}
    assert "xopt/importers/__init__.py" in wanted and "xopt/kernels/__init__.py" in wanted
    missing = wanted - set(zipfile.ZipFile(wheel).namelist())
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
