"""The Dockerfile read against pyproject.toml (no Docker needed): every hard dependency and
extra the image needs is installed or carried by the base image, the dpkg locale exclude of
Ubuntu images is removed before the gettext catalog packages are installed, and what
`pytest -m "gpu or tensorrt"` needs is copied in."""

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_packaging import dockerfile_instructions

ROOT = Path(__file__).resolve().parents[1]
# What NVIDIA's PyTorch container carries (distribution name -> module the Dockerfile imports
# to check it is there): never installed from PyPI in the image.
BASE = {"torch": "torch", "tensorrt": "tensorrt", "torch-tensorrt": "torch_tensorrt", "triton": "triton"}
# /etc/dpkg/dpkg.cfg.d/excludes of Ubuntu's container images
UBUNTU_EXCLUDES = """# Drop all man pages
path-exclude=/usr/share/man/*

# Drop all translations
path-exclude=/usr/share/locale/*/LC_MESSAGES/*.mo

# Drop all documentation ...
path-exclude=/usr/share/doc/*
"""

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def shell_commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line, split at &&, ;, || and | outside quotes (a leading
    `then`/`do`/`else` dropped)."""
    lex = shlex.shlex(run, posix=True, punctuation_chars=True)
    cmds, cur = [], []
    for tok in lex:
        if tok in ("&&", "||", ";", "|"):
            cmds.append(cur)
            cur = []
        elif not cur and tok in ("then", "do", "else"):
            continue
        else:
            cur.append(tok)
    return [c for c in cmds + [cur] if c]


@pytest.fixture(scope="module")
def docker():
    ins = dockerfile_instructions(ROOT / "Dockerfile")
    runs = [args for word, args in ins if word == "RUN"]
    installed, editable = {}, []
    for run in runs:
        for cmd in shell_commands(run):
            if cmd[:2] != ["pip", "install"] and cmd[:4] != ["python", "-m", "pip", "install"]:
                continue
            args = cmd[2:] if cmd[0] == "pip" else cmd[4:]
            skip_next = False
            for i, a in enumerate(args):
                if skip_next:
                    skip_next = False
                elif a in ("-c", "--constraint", "-r", "--requirement"):
                    skip_next = True
                elif a == "-e":
                    editable.append((args[i + 1], args))
                    skip_next = True
                elif not a.startswith("-"):
                    if a == ".":
                        editable.append((a, args))
                        continue
                    req = Requirement(a)
                    installed[canonicalize_name(req.name)] = req
    return {"ins": ins, "runs": runs, "installed": installed, "xopt": editable}


@pytest.fixture(scope="module")
def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _base_imports(runs: list[str]) -> set[str]:
    mods = set()
    for run in runs:
        for m in re.finditer(r'python -c "import ([\w., ]+)"', run):
            mods |= {x.strip() for x in m.group(1).split(",")}
    return mods


def test_every_hard_dependency_is_installed_as_pyproject_states_it(docker, project):
    for dep in project["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        if name in BASE:
            continue
        assert name in docker["installed"], f"hard dependency {dep!r} is not installed in the Dockerfile"
        assert str(docker["installed"][name]) == str(req), f"Dockerfile installs {docker['installed'][name]}, " \
                                                           f"pyproject.toml says {req}"
    assert "mlcommons-loadgen" in docker["installed"]


@pytest.mark.parametrize("extra", ["gpu", "demo", "test"])
def test_extras_are_installed_or_carried_by_the_base(docker, project, extra):
    imported = _base_imports(docker["runs"])
    for dep in project["optional-dependencies"][extra]:
        name = canonicalize_name(Requirement(dep).name)
        if name in BASE:
            assert BASE[name] in imported, f"{name}: carried by the base image, but the build does not check it"
        else:
            assert name in docker["installed"], f"{extra} extra: {dep!r} is not installed in the Dockerfile"
    assert {"nvidia-ml-py", "datasets"} <= set(docker["installed"])


def test_torch_and_the_base_libraries_are_kept(docker):
    """xopt goes in with --no-deps and every pip install is constrained to the base's versions."""
    assert docker["xopt"] and all("--no-deps" in args for _, args in docker["xopt"])
    assert set(BASE.values()) <= _base_imports(docker["runs"])
    for run in docker["runs"]:
        for cmd in shell_commands(run):
            if cmd[:2] == ["pip", "install"] and "--no-deps" not in cmd:
                assert "-c" in cmd, f"unconstrained pip install: {' '.join(cmd)}"
    assert "torch" not in docker["installed"] and "tensorrt" not in docker["installed"]


def test_locale_exclude_is_removed_before_the_catalog_packages(docker):
    seq = [cmd for run in docker["runs"] for cmd in shell_commands(run)]
    sed = next(i for i, c in enumerate(seq) if c[:1] == ["sed"] and "/etc/dpkg/dpkg.cfg.d/excludes" in c)
    apt = next(i for i, c in enumerate(seq) if c[:2] == ["apt-get", "install"] and "coreutils" in c)
    assert sed < apt, "the dpkg locale exclude must go before apt-get installs the catalog packages"
    assert all(sed < i for i, c in enumerate(seq) if c[:2] == ["apt-get", "install"])
    assert "--reinstall" in seq[apt], "packages already in the base need reinstalling to get their catalogs"
    # the catalog packages of README's set-up commands (which CI runs); the browser is for the
    # report's screenshot test only
    readme = (ROOT / "README.md").read_text()
    setup = re.findall(r"```sh\n(.*?)\n\s*```", readme[readme.index("## Set-up on a fresh machine"):], re.S)[1]
    pkgs = re.search(r"apt-get install ([^&]*)&&", setup).group(1).split()
    assert {p for p in pkgs if not p.startswith("-")} - set(seq[apt]) == {"chromium-headless-shell"}
    # the sed expression drops the locale exclude of Ubuntu's file and nothing else
    if shutil.which("sed"):
        expr = seq[sed][seq[sed].index("-i") + 1]
        out = subprocess.run(["sed", expr], input=UBUNTU_EXCLUDES, capture_output=True, text=True, check=True).stdout
        assert "/usr/share/locale" not in out and "path-exclude=/usr/share/man/*" in out \
            and "path-exclude=/usr/share/doc/*" in out


def test_what_pytest_gpu_needs_is_copied(docker):
    copied = {}
    for word, args in docker["ins"]:
        if word == "COPY":
            *srcs, dst = args.split()
            for s in srcs:
                copied[s.rstrip("/")] = dst
    needed = {"pyproject.toml", "xopt", "kernels", "calibration", "tests", "bench"}
    assert needed <= set(copied), f"not copied: {needed - set(copied)}"
    # the package dirs pyproject maps into xopt (kernels/, calibration/) all travel
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for src in proj["tool"]["setuptools"]["package-dir"].values():
        assert any(src == c or src.startswith(c + "/") for c in copied), f"{src}/ is not copied"
    # what the GPU tests import from tests/ itself lies in tests/
    for name in ("conftest.py", "mofile.py", "test_gpu_variants.py", "test_kernels.py", "fixtures"):
        assert (ROOT / "tests" / name).exists()
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")] if (ROOT / ".dockerignore").is_file() else []
    for path in ("tests/conftest.py", "tests/fixtures/xtreme", "bench/conftest.py", "pyproject.toml",
                 "kernels/xopt_kernels/__init__.py"):
        assert not any(fnmatch.fnmatch(path, pat) or path.startswith(pat.rstrip("/") + "/") for pat in ignore), path


def test_cache_is_a_volume_and_commands_run_as_given(docker):
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for w, a in docker["ins"] if w == "ENV")))
    volumes = {v.strip('[]"') for w, a in docker["ins"] if w == "VOLUME" for v in a.split()}
    assert env.get("XOPT_CACHE") in volumes
    # no ENTRYPOINT of our own: `docker run IMAGE xopt demo` and `docker run IMAGE python -m pytest`
    # both run as given (through the base image's entrypoint)
    assert not [a for w, a in docker["ins"] if w == "ENTRYPOINT"]
    assert docker["ins"][0][0] == "FROM" and docker["ins"][0][1].startswith("nvcr.io/nvidia/pytorch:")


def test_ubuntu_language_packs_cover_the_demo_languages(docker):
    """Ubuntu ships the catalogs of its main packages in language packs: the image installs
    those of every language the demo suite reads (XTREME's, less English)."""
    from xopt.tasks.demo import LOCALE_OF, XTREME_LANGS

    run = next(r for r in docker["runs"] if "language-pack-" in r)
    loop = re.search(r"for lang in ([\w\s-]+?); do", run).group(1).split()
    pack_lang = {"zh_CN": "zh-hans"}   # Ubuntu names Simplified Chinese's packs zh-hans
    want = {pack_lang.get(LOCALE_OF.get(la, la), la) for la in XTREME_LANGS if la != "en"}
    assert set(loop) == want
    assert '"language-pack-$lang-base"' in run and '"language-pack-gnome-$lang-base"' in run
