"""Run mutmut over the reward-deciding modules and write a per-module score table (issue 23).

    .venv/bin/python scripts/mutation_report.py                     # every module in [tool.mutmut]
    .venv/bin/python scripts/mutation_report.py 'services.verifier.graders.numeric.*'

mutmut 3 writes its mutants into ``mutants/`` next to the pyproject.toml it reads, so the run happens
in a workspace (``build/mutation/``, ignored by git) holding a copy of ``services/``, ``rewardhub/``, ``trainer/``,
``tests/`` and ``pyproject.toml``; the checkout is never touched. Results are cached there: a rerun
only re-tests mutants whose function or tests changed. The table comes from ``mutmut results --all
true`` (one ``name: status`` line per mutant); the score is killed / (all - skipped) and a mutant
listed in docs/mutation_equivalents.md counts apart, as equivalent, never as killed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("services", "rewardhub", "trainer", "tests", "migrations", "pyproject.toml", "alembic.ini")
EQUIVALENTS = REPO / "docs" / "mutation_equivalents.md"
# `services.verifier.graders.numeric.x__value__mutmut_3: survived`, or a method's
# `...care.selector.xǁSelectorǁpick__mutmut_1: killed`.
RESULT_LINE = re.compile(r"^\s*(?P<name>[\w.ǁ]+__mutmut_\d+): (?P<status>.+?)\s*$")
# An equivalent mutant in the list: a line starting with `- ` and the mutant's name in backticks.
EQUIVALENT_LINE = re.compile(r"^- `(?P<name>[\w.ǁ]+__mutmut_\d+)`")
NOT_EQUIVALENT_HEADING = "## Not killed and not equivalent"
# mutmut 3 never mutates a decorated function. The trainer's estimators, KL estimators, loss
# aggregations and execution modes are registered by decorator (``@register_estimator("group")``), so
# in the workspace copy of these files each module-level function whose decorators are all calls is
# rewritten as the plain function followed by ``name = decorator(name)`` (what the decorator syntax
# does), which lets mutmut mutate it; the checkout keeps the decorators.
UNDECORATE = ("trainer/algorithms/*.py",)


def sync_workspace(workspace: Path) -> None:
    """Copy the sources and tests into the workspace, keeping mtimes so mutmut's cache stays valid."""
    workspace.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in COPIED:
        source, target = REPO / name, workspace / name
        if source.is_dir():
            if target.exists():
                shutil.rmtree(target)  # a file deleted in the checkout must vanish here too
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)


def undecorate_source(source: str) -> str:
    """``@f(x)\\ndef g(...): ...`` → ``def g(...): ...\\ng = f(x)(g)`` for module-level functions whose
    decorators are all calls (registrations); other functions, classes and methods are left as they are."""
    import libcst as cst  # mutmut's own dependency

    module = cst.parse_module(source)
    body: list[cst.CSTNode] = []
    for node in module.body:
        decorators = node.decorators if isinstance(node, cst.FunctionDef) else ()
        if not decorators or not all(isinstance(d.decorator, cst.Call) for d in decorators):
            body.append(node)
            continue
        assert isinstance(node, cst.FunctionDef)
        name = node.name.value
        applied = " = " + "".join(module.code_for_node(d.decorator) + "(" for d in decorators)
        applied += name + ")" * len(decorators)
        body.append(node.with_changes(decorators=[]))
        body.append(cst.parse_statement(name + applied + "\n"))
    return module.with_changes(body=body).code


def undecorate_workspace(workspace: Path) -> None:
    """Apply :func:`undecorate_source` to the workspace's copies of the :data:`UNDECORATE` files.

    A rewritten copy keeps the checkout file's mtime, as copied files do (``copy2``), so mutmut's
    mtime check sees it as unmodified until the checkout's file changes; the rewrite is deterministic."""
    for pattern in UNDECORATE:
        for path in sorted(workspace.glob(pattern)):
            original = path.read_text()
            rewritten = undecorate_source(original)
            if rewritten != original:
                stat = (REPO / path.relative_to(workspace)).stat()
                path.write_text(rewritten)
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def drop_from_selection(workspace: Path, paths: list[str]) -> None:
    """Take test files out of the workspace's [tool.mutmut] test selection (never the checkout's).

    mutmut needs every selected test to pass unmutated; while a module is being rewritten its tests
    may fail, and this keeps the other modules' run going (those mutants then count as "no tests").
    """
    config = workspace / "pyproject.toml"
    text = config.read_text()
    for path in paths:
        line = f'    "{path}",\n'
        if line not in text:
            raise SystemExit(f"--drop-tests {path}: not in [tool.mutmut] pytest_add_cli_args_test_selection")
        text = text.replace(line, "")
    config.write_text(text)


def module_of(mutant: str) -> str:
    """``a.b.c.x_func__mutmut_1`` -> ``a.b.c`` (the last dotted part is the mutated function)."""
    return mutant.rsplit(".", 1)[0]


def parse_results(lines: Iterable[str]) -> dict[str, str]:
    """Mutant name -> mutmut's status, from ``mutmut results --all true``."""
    found = {}
    for line in lines:
        match = RESULT_LINE.match(line)
        if match:
            found[match["name"]] = match["status"]
    return found


def load_equivalents(path: Path = EQUIVALENTS) -> set[str]:
    """The names listed as equivalent; the file's last section (survivors that are not) ends the list."""
    if not path.exists():
        return set()
    names = set()
    for line in path.read_text().splitlines():
        if line.startswith(NOT_EQUIVALENT_HEADING):
            break
        if match := EQUIVALENT_LINE.match(line):
            names.add(match["name"])
    return names


def score_table(statuses: dict[str, str], equivalents: set[str]) -> list[str]:
    """One markdown row per module: counts per status and the score killed / (total - skipped - equivalent)."""
    per_module: dict[str, Counter[str]] = {}
    for name, status in statuses.items():
        counts = per_module.setdefault(module_of(name), Counter())
        counts["equivalent" if name in equivalents and status == "survived" else status] += 1
    rows = ["| module | mutants | killed | survived | equivalent | timeout | no tests | other | score |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    totals: Counter[str] = Counter()
    for module in sorted(per_module):
        counts = per_module[module]
        totals.update(counts)
        rows.append(row(module, counts))
    rows.append(row("**all**", totals))
    return rows


def row(label: str, counts: Counter[str]) -> str:
    named = ("killed", "survived", "equivalent", "timeout", "no tests")
    total = sum(counts.values())
    other = total - sum(counts[k] for k in named)
    # A timeout is a kill in mutmut's own summary too (the mutant made the tests hang).
    judged = total - counts["equivalent"] - counts["skipped"]
    caught = counts["killed"] + counts["timeout"]
    score = f"{100 * caught / judged:.1f}%" if judged else "n/a"
    return (f"| {label} | {total} | {counts['killed']} | {counts['survived']} | {counts['equivalent']} | "
            f"{counts['timeout']} | {counts['no tests']} | {other} | {score} |")


def run_mutmut(workspace: Path, names: list[str], max_children: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REWARDHUB_REQUIRE_SERVICES"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    mutmut = Path(sys.executable).with_name("mutmut")
    command = [str(mutmut), "run", "--max-children", str(max_children), *names]
    # mutmut exits non-zero when mutants survive; the table below is what decides.
    subprocess.run(command, cwd=workspace, env=env, check=False)


def read_results(workspace: Path) -> dict[str, str]:
    mutmut = Path(sys.executable).with_name("mutmut")
    done = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=workspace, check=True,
                          capture_output=True, text=True)
    return parse_results(done.stdout.splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutant name globs (default: every module in [tool.mutmut])")
    parser.add_argument("--workspace", type=Path, default=REPO / "build" / "mutation")
    parser.add_argument("--report", type=Path, default=REPO / "build" / "mutation-report.md")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--no-run", action="store_true", help="only tabulate the cached results")
    parser.add_argument("--drop-tests", action="append", default=[], metavar="PATH",
                        help="leave this test file out of the selection for this run (repeatable)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    if not args.no_run:
        sync_workspace(args.workspace)
        undecorate_workspace(args.workspace)
        drop_from_selection(args.workspace, args.drop_tests)
        run_mutmut(args.workspace, args.names, args.max_children)
    wall = time.monotonic() - started
    statuses = read_results(args.workspace)
    equivalents = load_equivalents()
    # "not checked": outside the names asked for this time (a partial run); the table counts them.
    survivors = sorted(n for n, s in statuses.items()
                       if s not in ("killed", "timeout", "not checked") and n not in equivalents)
    lines = ["# Mutation report (mutmut)", "", *score_table(statuses, equivalents), "",
             f"wall time: {wall:.0f} s" + (" (tabulated from the cache)" if args.no_run else ""), "",
             f"## Not killed and not listed as equivalent ({len(survivors)})", "",
             *(f"- `{n}`: {statuses[n]}" for n in survivors)]
    text = "\n".join(lines) + "\n"
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)
    print(f"report written to {args.report}")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
