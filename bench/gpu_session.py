"""Every pending GPU measurement in one command with its own time budget: the steps run in order of
value, each only if the time it needs is left, each with the rest of the budget as its limit, and
each writes its record (command, seconds, exit status, what it printed or wrote) under one folder.

    python bench/gpu_session.py --budget 840 --out results/gpu_session      # on a GPU machine
    python bench/gpu_session.py --rehearse --out results/rehearsal             # anywhere: CPU, tiny sizes

Steps, in order: gpu_check (the GPU tests and bench/gpu_step.py), step_compile, camvid_step, the
paper's 40 epochs with seeds 0-2 for camvid_dinov2, msrc_dinov2 and msrc_lite0 (studies/psi_tuning.py:
Ours, Ours* and K-means), and pascal_size (bench/pascal_size.py at --pascal-scale); docs/offline.md
says what each measures and what it needs.

Training runs use the bf16 switches (train.precision, train.search_precision) and batches resident
in GPU memory where they fit (the default). Their inputs: the datasets (data/ or ../shared/datasets)
and the backbones' weights (weights/, or the offline kit's copy); a step whose data is missing is
skipped with the reason. Writes `{out}/steps/{step}.json`, `{out}/session.json` (device, torch,
budget, every step's record) and `{out}/session.log` (everything the steps printed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from pipeline.datasets import resolve_data_root
from pipeline.errors import InputError

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# the bf16 switches every training step of the session uses
BF16 = "precision=bfloat16,search_precision=bfloat16"


@dataclass
class Step:
    name: str
    commands: list[list[str]]  # run in turn; the step stops at the first that fails
    needs_s: int  # what the step takes on a GPU (an estimate): it starts only with this much left
    data: list[str] = field(default_factory=list)  # datasets it reads
    csv: str | None = None  # a CSV it writes, read back into its record


def psi_runs(
    dataset: str, backbone: str, epochs: int, seeds: list[int], out: Path, device: str, threads: int
) -> list[str]:
    return [
        *[PY, "-m", "studies.psi_tuning", "--dataset", dataset, "--backbone", backbone, "--device", device],
        *["--threads", str(threads), "--extract", "--methods", "nes", "nes_star", "kmeans"],
        *["--set", f"epochs={epochs},{BF16}", "--seeds", *map(str, seeds), "--out", str(out)],
    ]


def plan(args: argparse.Namespace, out: Path) -> list[Step]:
    """The steps, at full size or (rehearsal) at a size a CPU runs in a few minutes."""
    steps_dir = out / "steps"
    if args.rehearse:
        device, threads, seeds, epochs = "cpu", 2, [0], 1
        small = ["--device", "cpu", "--steps", "2", "--batch", "2", "--grid", "8", "--K", "16", "--heads", "2"]
        step_args = small
        camvid_step = [*small, "--no-extraction"]
        pascal = ["--scale", "0.004", "--epochs", "1", "--set", "heads=2", "--set", "K=16", "--no-crf", "--cores", "2"]
        gpu_tests: list[list[str]] = []
    else:
        device, threads, seeds, epochs = "cuda", args.threads, [0, 1, 2], 40
        step_args = []
        camvid_step = ["--batch", "8", "--grid", "29", "--K", "128", "--heads", "4", "--no-extraction"]
        pascal = ["--scale", str(args.pascal_scale), "--cores", str(args.threads)]
        gpu_tests = [[PY, "-m", "pytest", "-q", "-m", "gpu", "-rs", "tests/test_gpu.py"]]
    config = ["--configfile", str(out / "sizes.yaml")] if args.rehearse else []
    return [
        Step("gpu_check", [*gpu_tests, [PY, "bench/gpu_step.py", *step_args]], 120),
        Step("step_compile", [[PY, "bench/gpu_step.py", "--compile", "--no-extraction", *step_args]], 150),
        Step("camvid_step", [[PY, "bench/gpu_step.py", *camvid_step]], 60),
        *(
            Step(
                name,
                [[*psi_runs(ds, bb, epochs, seeds, steps_dir / f"{name}.csv", device, threads), *config]],
                needs,
                [ds],
                f"{name}.csv",
            )
            for name, ds, bb, needs in (
                ("camvid_dinov2", "camvid", "dinov2_s14", 420),
                ("msrc_dinov2", "msrc", "dinov2_s14", 600),
                ("msrc_lite0", "msrc", "lite0", 420),
            )
        ),
        Step("pascal_size", [[PY, "bench/pascal_size.py", *pascal, "--workdir", str(out / "pascal_size")]], 300),
    ]


def missing_data(datasets: list[str]) -> str | None:
    """Why a step cannot run for want of data (`data_root: auto`, as the workflow looks), or None."""
    for name in datasets:
        try:
            resolve_data_root(name, "auto")
        except InputError as err:
            return str(err)
    return None


def json_line(line: str) -> dict | None:
    """A line that is one JSON object (what the benchmark scripts print as their result)."""
    if not (line.startswith("{") and line.endswith("}")):
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def run_step(step: Step, limit_s: float, out: Path, log) -> dict:
    """Run one step's commands within `limit_s`; its record."""
    started, printed, rc = time.monotonic(), "", 0
    for command in step.commands:
        log.write(f"\n===== {step.name}: {shlex.join(command)}\n")
        log.flush()
        try:
            left = limit_s - (time.monotonic() - started)
            done = subprocess.run(
                command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=left
            )
            rc, text = done.returncode, done.stdout
        except subprocess.TimeoutExpired as err:
            rc, text = "timeout", err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        log.write(text)
        log.flush()
        printed += text
        if rc:
            break
    commands = " && ".join(shlex.join(c) for c in step.commands)
    record: dict = {"step": step.name, "command": commands, "seconds": round(time.monotonic() - started, 1), "rc": rc}
    results = [parsed for line in printed.splitlines() if (parsed := json_line(line)) is not None]
    if results:
        record["results"] = results
    if step.csv and (out / "steps" / step.csv).is_file():
        with open(out / "steps" / step.csv) as fh:
            record["rows"] = list(csv.DictReader(fh))
    return record


def device_info() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["device"] = platform.processor() or platform.machine()
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=840, help="seconds for the whole session")
    p.add_argument("--out", default="results/gpu_session")
    p.add_argument("--only", nargs="+", help="run just these steps, in the session's order")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--pascal-scale", type=float, default=0.25, help="fraction of Pascal Context's image counts")
    p.add_argument("--rehearse", action="store_true", help="CPU, tiny sizes, 8 images a split: checks the script")
    args = p.parse_args()
    out = Path(args.out).resolve()
    os.chdir(REPO)  # the steps and `data_root: auto` read paths from the repository
    if (out / "session.json").exists():
        sys.exit(f"{out}: holds a finished session (session.json); choose another --out")
    (out / "steps").mkdir(parents=True, exist_ok=True)
    if args.rehearse:
        sizes = {
            "results": str((out / "results").resolve()),
            "datasets": {d: {"max_images": 8} for d in ("camvid", "msrc")},
        }
        (out / "sizes.yaml").write_text(yaml.safe_dump(sizes))
    deadline = time.monotonic() + args.budget
    session = {"budget_s": args.budget, "rehearsal": args.rehearse, **device_info(), "steps": []}
    with open(out / "session.log", "a") as log:
        for step in plan(args, out):
            left = deadline - time.monotonic()
            if args.only and step.name not in args.only:
                continue
            reason = missing_data(step.data)
            if reason is None and not args.rehearse and left < step.needs_s:
                reason = f"{left:.0f} s left, the step needs about {step.needs_s} s"
            if reason:
                record = {"step": step.name, "skipped": reason}
            else:
                print(f"{step.name}: up to {left:.0f} s", flush=True)
                record = run_step(step, left, out, log)
            print(json.dumps({k: v for k, v in record.items() if k not in ("results", "rows")}), flush=True)
            (out / "steps" / f"{step.name}.json").write_text(json.dumps(record, indent=1) + "\n")
            session["steps"].append(record)
    session["seconds"] = round(args.budget - (deadline - time.monotonic()), 1)
    (out / "session.json").write_text(json.dumps(session, indent=1) + "\n")


if __name__ == "__main__":
    main()
