"""What a fresh machine installs: the locked set of versions (constraints.txt), and a wheel that works
without the source checkout (the recipes ship inside it)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TASK_CONFIGS, make_config, write_config
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

LOCK = REPO_ROOT / "constraints.txt"


def _locked() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return [Requirement(r) for r in [*project["dependencies"], *extras]]


def test_every_dependency_is_locked_inside_its_range():
    locked = _locked()
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in constraints.txt: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (requirement, locked[name])


@pytest.mark.skipif(os.environ.get("HFMTL_LOCKED") != "1", reason="only where `make test` installed the lock")
def test_the_installed_versions_are_the_locked_ones():
    wrong = {}
    for name, version in _locked().items():
        installed = Version(importlib.metadata.version(name))
        if Version(installed.base_version) != version and installed != version:  # 2.13.0+cpu is 2.13.0
            wrong[name] = f"{installed} installed, {version} locked"
    assert wrong == {}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # built with this venv's setuptools (no download); a venv of Python 3.12+ may have none
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy of the source: setuptools builds in the tree (build/), where modules left by an
    # earlier layout would slip into the wheel
    source = tmp_path_factory.mktemp("source") / "hfmtl-src"
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "outputs", "__pycache__"),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("hfmtl-*.whl")
    return found


def test_the_wheel_holds_every_module_the_recipes_and_the_card_template(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "hfmtl").rglob("*.py")}
    expected |= {f"hfmtl/recipes/{p.name}" for p in (REPO_ROOT / "recipes").glob("*.py")}
    expected |= {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "hfmtl").rglob("*.jinja")}
    assert expected - names == set()
    assert {n for n in names if n.endswith(".py")} - expected == set()  # nothing stale from an older layout
    assert "hfmtl/recipes/train.py" in names
    assert "hfmtl/publish/model_card.md.jinja" in names


@pytest.mark.slow
def test_hfmtl_train_from_the_installed_wheel_outside_the_checkout(wheel, tiny_encoder_dir, tmp_path):
    """`pip install .` then `hfmtl train` from any directory: nothing is read from the checkout."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the wheel's hfmtl comes first: this venv's editable install of the checkout is found after it
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import hfmtl.recipes.train as r; print(r.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site)
    hfmtl_script = site / "bin" / "hfmtl"

    usage = subprocess.run(
        [str(hfmtl_script), "train", "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert usage.returncode == 0 and "--config" in usage.stdout

    out = tmp_path / "out"
    config = make_config(tiny_encoder_dir, out, {"rte": TASK_CONFIGS["rte"]}, max_steps=2)
    cfg = write_config(elsewhere / "run.yaml", config)
    run = subprocess.run(
        [str(hfmtl_script), "train", cfg.name, "--cpu"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 2
    # the card is rendered from the template inside the wheel
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "## Tasks" in card and "| `rte` | classification |" in card
