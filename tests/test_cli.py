"""The command line's conventions: global options before or after the command, --run and
--out/--out-dir spelled alike everywhere, the commands people call listed first with the exit
codes, and a default configuration found from any working folder."""

import subprocess
import sys

from conftest import REPO

from pipeline.cli_args import PEOPLE, WORKFLOW, build_parser


def test_global_options_are_accepted_before_or_after_the_command():
    parse = build_parser().parse_args
    after = parse(["fit", "--spec", "s.json", "--run", "r", "--threads", "3", "--log", "f.log"])
    before = parse(["--threads", "2", "--log", "g.log", "fit", "--spec", "s.json", "--run", "r"])
    neither = parse(["fit", "--spec", "s.json", "--run", "r"])
    assert (after.threads, after.log) == (3, "f.log")
    assert (before.threads, before.log) == (2, "g.log")  # not undone by the command's own defaults
    assert (neither.threads, neither.log) == (None, None)


def test_run_and_output_options_are_spelled_alike_in_every_command():
    parser = build_parser()
    assert parser.parse_args(["fit", "--spec", "s", "--run-dir", "r"]).run == "r"  # the old spelling
    for name in (*PEOPLE, *WORKFLOW):
        options = {a.dest: a for a in parser._subparsers._group_actions[0].choices[name]._actions}
        if "run" in options:
            assert "--run" in options["run"].option_strings, name
        if "out_dir" in options:  # a folder is --out-dir; --out is a file (segment's --out: a hidden alias)
            assert "folder" in (options["out_dir"].help or ""), name


def test_help_lists_the_commands_people_call_first_with_the_exit_codes():
    text = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=True
    ).stdout
    positions = [text.index(f"\n  {name} ") for name in (*PEOPLE, *WORKFLOW)]
    assert positions == sorted(positions) and next(iter(PEOPLE)) == "segment"
    assert "exit codes:" in text and "\n  2  bad input" in text


def test_check_config_finds_the_default_configuration_from_any_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "check-config"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {REPO / 'config' / 'config.yaml'} (")
