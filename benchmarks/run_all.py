"""Run the benchmark scripts and write benchmarks/RESULTS.md from what they print (``make bench``).

Every other ``benchmarks/*.py`` is one claim: it measures a figure and prints it beside its
target. This script runs each in turn, in a fresh interpreter from the repository root, shows
its output live and records it: the claim (the script's docstring summary), the command, the
machine (CPU model, usable cores, memory), the date, the commit, the wall time, the exit
status and the script's own stdout and stderr verbatim. RESULTS.md is rewritten atomically
(temporary file + rename) after every script, so an interrupted run keeps what it finished.

Every script runs with ``--contended``: its main figure is measured idle and then beside one
busy process (``_contention.py``: a speed that holds on a shared 2-core machine), and the
comparison lines it prints make the summary table at the top of RESULTS.md: idle, contended,
their ratio and whether it meets the target (contended >= 1/2.3 of the idle speed).

Each script has its own section, replaced when it runs again and kept otherwise; so
``--only NAME`` refreshes one slow benchmark alone and leaves the others' records (each with
its own date and machine) in place. Sections of scripts that no longer exist are dropped.

Run: .venv/bin/python benchmarks/run_all.py [--only NAME ...] [--timeout SECONDS] [--list]
     make bench [ONLY="klm_sample hcal_latency"]
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _contention

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"

# The arguments each claim is measured with, where the script's defaults are not those.
ARGS: dict[str, list[str]] = {
    "grid_width_limit": ["--events", "10000", "--replicas", "10", "--fit"],
    "hcal_simulate": ["--channels", "2000000"],
    "prepare_throughput": ["--rounds", "5"],
}

BEGIN = "<!-- bench: {} -->"
END = "<!-- /bench: {} -->"
SECTION = re.compile(r"<!-- bench: (\S+) -->\n.*?<!-- /bench: \1 -->\n", re.DOTALL)


def scripts() -> dict[str, Path]:
    """Benchmark name (file stem) -> script, in name order; not this runner, nor private files."""
    return {
        p.stem: p
        for p in sorted(HERE.glob("*.py"))
        if p.name != Path(__file__).name and not p.name.startswith("_")
    }


def claim(script: Path) -> str:
    """The summary paragraph of the script's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.strip().split("\n\n")[0].split()) or script.stem


def machine() -> str:
    """CPU model, usable cores, memory, OS and Python, on one line."""
    model = platform.processor() or platform.machine()
    memory = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE).group(1).strip()
        kib = int(re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model}, {cores} cores usable ({os.cpu_count()} online){memory}; "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}"
    )


def commit() -> str:
    """The checked-out commit, marked ``-dirty`` when the work tree differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _tee(stream: object, sink: object, lines: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.write(line)
        sink.flush()
        lines.append(line)


def run(name: str, script: Path, timeout: float | None) -> tuple[str, bool]:
    """Run one script, its output shown as it comes; returns its RESULTS.md section and whether
    it exited with status 0."""
    argv = [sys.executable, str(script.relative_to(ROOT)), *ARGS.get(name, []), "--contended"]
    shown = " ".join([".venv/bin/python" if ".venv" in sys.executable else "python", *argv[1:]])
    print(f"\n=== {name}: {shown}", flush=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    t0 = time.perf_counter()
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=_tee, args=(proc.stdout, sys.stdout, out)),
        threading.Thread(target=_tee, args=(proc.stderr, sys.stderr, err)),
    ]
    for reader in readers:
        reader.start()
    try:
        status = str(proc.wait(timeout=timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = f"killed after the {timeout:g} s timeout"
    for reader in readers:
        reader.join()
    wall = time.perf_counter() - t0
    lines = [
        BEGIN.format(name),
        f"## {name}",
        "",
        claim(script),
        "",
        f"- command: `{shown}`",
        f"- machine: {machine()}",
        f"- date: {started:%Y-%m-%d %H:%M} UTC (load average at start {load})",
        f"- commit: `{commit()}`",
        f"- wall time: {wall:.1f} s",
        f"- exit status: {status}" + ("" if status == "0" else " (**failed**)"),
        "",
        "stdout:",
        "",
        _fenced("".join(out)),
    ]
    if "".join(err).strip():
        lines += ["stderr:", "", _fenced("".join(err))]
    return "\n".join(lines) + "\n" + END.format(name) + "\n", status == "0"


def _fenced(text: str) -> str:
    """``text`` verbatim in a code block: a progress bar's carriage-return rewrites keep their
    last state, and the fence is longer than any run of backticks inside."""
    text = "\n".join(line.rsplit("\r", 1)[-1] for line in text.rstrip().split("\n"))
    fence = "`" * max([3, *(len(m) + 1 for m in re.findall(r"`+", text))])
    return f"{fence}text\n{text}\n{fence}\n"


STDOUT = re.compile(r"^stdout:\n\n(`{3,})text\n(.*?)\n\1\n", re.DOTALL | re.MULTILINE)


def contention_rows(sections: dict[str, str], names: list[str]) -> list[str]:
    """The summary table: each script's comparison lines (``_contention``), from the stdout
    recorded in its section."""
    rows = [
        "| script | figure | idle | contended | ratio | meets 1/2.3? | conditions |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        if name not in sections:
            rows.append(f"| {name} | not run yet | | | | | |")
            continue
        stdout = STDOUT.search(sections[name])
        found = _contention.parse(stdout.group(2)) if stdout else []
        if not found:
            # A record from before --contended, or a run that failed before its figure.
            rows.append(f"| [{name}](#{name}) | no contended figure recorded | | | | | |")
        for c in found:
            cells = [
                c["figure"],
                c["idle"],
                c["contended"],
                f"{c['ratio']} ({c['kind']})",
                c["verdict"],
                c["context"],
            ]
            rows.append(
                f"| [{name}](#{name}) | " + " | ".join(x.replace("|", "\\|") for x in cells) + " |"
            )
    return rows


def write(sections: dict[str, str], names: list[str]) -> None:
    """RESULTS.md from the sections, in script order, written atomically."""
    rows = ["| benchmark | date | wall time | exit status |", "|---|---|---|---|"]
    for name in names:
        if name in sections:
            date = re.search(r"- date: (\S+ \S+)", sections[name]).group(1)
            wall = re.search(r"- wall time: (.+)", sections[name]).group(1)
            status = re.search(r"- exit status: (.+)", sections[name]).group(1)
            rows.append(f"| [{name}](#{name}) | {date} | {wall} | {status} |")
        else:
            rows.append(f"| {name} | not run yet | | |")
    text = "\n".join(
        [
            "# Benchmark results",
            "",
            "Written by `make bench` (`benchmarks/run_all.py`); do not edit by hand. Each script",
            "in `benchmarks/` is one claim: it prints its measured figure beside its target.",
            "Refresh one with `make bench ONLY=name`; each section keeps the date, machine and",
            "commit it was measured on. Earlier, hand-recorded figures: `docs/findings.md`.",
            "",
            "Idle and contended: each script's main figure measured idle, then beside one busy",
            "process spinning on a core (`--contended`, `benchmarks/_contention.py`). The ratio is",
            "the contended speed over the idle speed (a throughput contended/idle, a time",
            f"idle/contended); the target is >= 1/2.3 = {_contention.TARGET:.2f}, the fair share "
            f"of one core in two {_contention.FAIR_SHARE:.2f}.",
            "Conditions: the CPU share the busy process got (below 1: others competed as well)",
            "and the 1-minute load average before the idle run and after the contended one.",
            "",
            *contention_rows(sections, names),
            "",
            *rows,
            "",
            *(sections[name] for name in names if name in sections),
        ]
    )
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=RESULTS.parent, prefix=".RESULTS.", suffix=".tmp", delete=False
    ) as tmp:
        tmp.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp.name, 0o666 & ~umask)  # a temporary file is private; the results are not
    os.replace(tmp.name, RESULTS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="run only these benchmarks (file stems, e.g. klm_sample); keep the others' records",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per script")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args()
    found = scripts()
    if args.list:
        for name, script in found.items():
            print(f"{name}: {claim(script)}")
        return 0
    chosen = [n.removesuffix(".py") for n in args.only] if args.only else list(found)
    unknown = [n for n in chosen if n not in found]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(found)}")
    existing = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else ""
    sections = {m.group(1): m.group(0) for m in SECTION.finditer(existing)}
    sections = {name: text for name, text in sections.items() if name in found}
    failed = []
    for name in chosen:
        sections[name], ok = run(name, found[name], args.timeout)
        write(sections, list(found))
        if not ok:
            failed.append(name)
    print(
        f"\nwrote {RESULTS.relative_to(ROOT)}"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
