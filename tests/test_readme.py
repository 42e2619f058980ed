"""Every command the README shows, checked against the code so the README cannot drift.

Commands are the lines of its ```bash blocks and its inline code spans that start with ``python``, ``make`` or a
known external tool. For each, generically:
- ``python -m MODULE [subcommand] ...`` (also after ``accelerate launch``) and ``python script.py ...``:
  ``--help`` runs, every ``--flag`` the README uses is in that help, and every option the help's usage marks
  required is given (a synopsis like ``<source|all>`` or ``FILE`` stands for a value);
- ``make TARGET``: the target is in the Makefile and ``make -n TARGET`` plans it;
- a path into the repository (``configs/…``, ``tests/x.py::test_name``) exists, and no tracked file is ignored;
- external tools (``chromium``, ``huggingface-cli``, ``accelerate``, ``ray``): ``--help`` runs when installed,
  else the check is skipped with the reason.
Commands are not run for real here: `make test` runs `make dataset` and `tests/test_sample_dataset.py` runs the
evaluation smoke command on what it built.
"""

from __future__ import annotations

import contextlib
import glob
import io
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# runpy warns when it re-runs a module the package already imported (datagen.models): the CLI's own code runs
pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")
ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
EXTERNAL = ("chromium", "huggingface-cli", "hf", "accelerate", "ray", "apt-get", "pip")
PLACEHOLDER = re.compile(r"[<>…]|\b(FILE|DIR|ADDR|N|IMG|MASK|SET|NAME|URL|REPO)\b|path/to|^my\.|\.\.\.")


def readme_commands() -> list[str]:
    """One string per command: ```bash block lines (continuations joined, comments cut) and inline code spans."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).strip()
            if line:
                commands.append(line)
    starts = ("python ", "make ", *(f"{tool} " for tool in EXTERNAL))
    for span in re.findall(r"`([^`\n]+)`", README):
        if span.startswith(starts) and span not in commands:
            commands.append(span)
    return commands


COMMANDS = readme_commands()


def words(command: str) -> list[str]:
    """Shell words with a synopsis' brackets taken off (``[--out DIR]`` → ``--out``, ``DIR``)."""
    try:
        raw = shlex.split(command)
    except ValueError:
        raw = command.split()
    return [w for w in (w.strip("[](){}") for w in raw) if w]


def module_of(ws: list[str]) -> tuple[list[str], list[str]] | None:
    """(how to run it in-process, its arguments) for a Python CLI: ``-m MODULE`` or ``python script.py``."""
    if "-m" in ws and ws[0] in ("python", "python3", "accelerate"):
        i = ws.index("-m")
        return ["-m", ws[i + 1]], ws[i + 2 :]
    if ws[0] in ("python", "python3") and len(ws) > 1 and ws[1].endswith(".py"):
        return [ws[1]], ws[2:]
    return None


def help_text(target: list[str], args: list[str]) -> str:
    """``--help`` of a CLI, run in this process (one interpreter start and torch import for all of them)."""
    out = io.StringIO()
    argv, path = sys.argv, list(sys.path)
    sys.argv = [target[-1], *args, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
            if target[0] == "-m":
                runpy.run_module(target[1], run_name="__main__", alter_sys=True)
            else:
                sys.path.insert(0, str(ROOT / Path(target[0]).parent))
                runpy.run_path(str(ROOT / target[0]), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path
    assert stop.value.code in (0, None), f"{' '.join(target)} {' '.join(args)} --help exited {stop.value.code}"
    return out.getvalue()


def usage(text: str) -> str:
    return text.split("\n\n", 1)[0]


def subcommand(text: str, args: list[str]) -> list[str]:
    """The first argument when the usage offers it as a choice (argparse's ``{a,b,c}``): its own help follows."""
    choices = re.search(r"\{([\w,-]+)\}", usage(text))
    first = next((a for a in args if not a.startswith("-")), None)
    return [first] if choices and first in choices[1].split(",") else []


def required_options(text: str) -> set[str]:
    """Options the usage line shows outside brackets (argparse brackets the optional ones)."""
    line = usage(text)
    while True:
        stripped = re.sub(r"\[[^\[\]]*\]", "", line)
        if stripped == line:
            break
        line = stripped
    return set(re.findall(r"(?<![\w-])(--[a-z0-9][\w-]*)", line))


def repo_paths(ws: list[str]) -> list[str]:
    """Words that name something inside the repository (their first part is a tracked top-level entry)."""
    tops = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")} - {"data", "runs", "eval", "out"}
    paths = []
    for w in ws:
        w = w.split("=", 1)[-1] if w.startswith("--") else w
        if "/" in w and not PLACEHOLDER.search(w) and "://" not in w and w.split("/")[0] in tops:
            paths.append(w)
    return paths


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_matches_the_code(command):
    ws = words(command)
    tool = ws[0]
    for path in repo_paths(ws):
        file, _, test = path.partition("::")
        assert glob.glob(str(ROOT / file)), f"README names {file}, which is not in the repository"
        if test:
            assert re.search(rf"def {re.escape(test)}\b", (ROOT / file).read_text()), f"no {test} in {file}"
    if tool == "make":
        targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
        for target in [w for w in ws[1:] if not w.startswith("-") and "=" not in w]:
            assert target in targets, f"README runs `make {target}`; the Makefile has {sorted(targets)}"
            done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
        return
    cli = module_of(ws)
    if cli is None:
        if tool in EXTERNAL:
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} is an external tool and not installed here")
            assert subprocess.run([tool, "--help"], capture_output=True, timeout=60).returncode == 0
            return
        pytest.fail(f"README command {command!r}: neither python, make nor a known external tool")
    target, args = cli
    text = help_text(target, [])
    sub = subcommand(text, args)
    if sub:
        text = help_text(target, sub)
    flags = {w.split("=", 1)[0] for w in args if w.startswith("--")}
    offered = set(re.findall(r"(?<![\w-])(--[a-z0-9][\w-]*)", text))
    assert flags <= offered, f"{command!r}: {sorted(flags - offered)} not in `{' '.join([*target, *sub])} --help`"
    missing = required_options(text) - flags
    assert not missing, f"{command!r} leaves out the required {sorted(missing)}"


def test_no_tracked_file_is_ignored():
    """Files the README tells users to copy (configs/*.yaml) must not be listed in .gitignore."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "ls-files", "-ci", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert not ignored, f".gitignore ignores tracked files: {ignored}"


def test_makefile_points_at_readme_sections_that_exist():
    headings = set(re.findall(r"^#+ (.+)$", README, re.M))
    for named in re.findall(r'README "([^"]+)"', (ROOT / "Makefile").read_text()):
        assert any(h.startswith(named) for h in headings), f'Makefile points at README "{named}": no such section'
