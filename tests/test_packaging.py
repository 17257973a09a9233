"""environment.yml, pyproject.toml and constraints.txt agree (conda itself is not available here)."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pins():
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return out


def test_environment_yml_installs_this_package_with_existing_extras():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert SpecifierSet(pyproject()["requires-python"]).contains(python.split("=")[1] + ".0")
    pip_lines = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    editable = next(line for line in pip_lines if line.startswith("-e ."))
    extras = editable.split("[")[1].rstrip("]").split(",")
    assert set(extras) <= set(pyproject()["optional-dependencies"])
    assert "-c constraints.txt" in pip_lines


def test_every_pin_satisfies_the_declared_range():
    declared = [Requirement(r) for r in pyproject()["dependencies"]]
    declared += [Requirement(r) for reqs in pyproject()["optional-dependencies"].values() for r in reqs]
    pinned = pins()
    for req in declared:
        name = canonicalize_name(req.name)
        if name in pinned:
            assert req.specifier.contains(pinned[name], prereleases=True), (
                f"{name}: pin {pinned[name]} outside {req.specifier}"
            )
    # torch, torchvision and timm are pinned together (a lone timm install can replace torch)
    assert {"torch", "torchvision", "timm"} <= set(pinned)


def test_config_readme_is_generated_from_the_schema_and_covers_every_key():
    """config/README.md is what `python -m pipeline.configdoc` renders from the schema, and every
    key of config/config.yaml's groups is described there."""
    from pipeline.configdoc import render

    readme = (REPO / "config" / "README.md").read_text()
    assert readme == render(), "config/README.md is stale: run `python -m pipeline.configdoc > config/README.md`"
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for group in ("extract", "train", "kmeans", "evaluate", "graph"):
        for key in config[group]:
            assert f"| `{key}` |" in readme or f"| `{group}.{key}` |" in readme, (group, key)


def test_license_file_matches_the_declared_license():
    assert pyproject()["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")
