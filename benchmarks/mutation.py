"""Mutation testing of the kit's core modules with mutmut: does the suite notice when the code goes wrong?

mutmut makes one small edit at a time to a module (an operator, a constant, a comparison, an argument dropped) and
runs the module's own quick tests against it: a mutant no test fails on is a bug users could suffer unnoticed.
Each module is judged by its own test files (pyproject.toml, [tool.distil-kit.mutation]), not by every training
run that happens to pass through it, so one module takes minutes. The score is killed over mutants less the
equivalent ones (edits no user could observe, each with its reason in ``mutation_equivalent.yaml``).

    python benchmarks/mutation.py stats            # one module
    python benchmarks/mutation.py --all --table benchmarks/results/mutation.md

mutmut runs in a copy of the project per module, ``.mutation/<module>/`` (ignored by git), configured by
[tool.mutmut] plus the module's entry; the copy keeps mutmut's results, so a second run only checks what changed.
The first run of a module spends a minute or two learning which of its tests reach which function.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".mutation"
EQUIVALENT = Path(__file__).with_name("mutation_equivalent.yaml")
SURVIVED = {"survived", "no tests"}  # "no tests": none of the module's tests reaches the function at all


def modules() -> dict[str, dict]:
    """Each module's entry: ``tests`` (its test files) and ``mutants`` (mutmut's names of the mutants that count,
    ``<module>.x_<function>__mutmut_<n>`` or ``<module>.xǁ<Class>ǁ<method>__mutmut_<n>``; default all)."""
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["distil-kit"]["mutation"]
    return {m: {"mutants": [f"distil_kit.{m}.*"], **entry} for m, entry in table.items()}


def toml_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def stage(module: str, entry: dict) -> Path:
    """``.mutation/<module>/``: a fresh copy of the project, its pyproject's [tool.mutmut] narrowed to the module."""
    folder = WORK / module
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPO / "pyproject.toml").read_text()
    settings = tomllib.loads(text)["tool"]["mutmut"]
    for name in ["distil_kit", "tests", *settings["also_copy"]]:  # what mutmut copies on into mutants/
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, target)
    settings |= {
        "source_paths": ["distil_kit"],
        "only_mutate": [f"distil_kit/{module}.py"],
        "pytest_add_cli_args_test_selection": [*entry["tests"], "-m", "not gpu and not slow"],
    }
    start = text.index("[tool.mutmut]")
    end = text.find("\n[", start + 1)
    table = "[tool.mutmut]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items())
    (folder / "pyproject.toml").write_text(text[:start] + table + (text[end:] if end >= 0 else ""))
    return folder


def test_environment() -> dict[str, str]:
    """CI's environment (.ci/run): a test skipped for want of SST-2 would let every mutant it reaches survive."""
    data = Path(os.environ.get("DISTIL_KIT_SST2", REPO.parent / "shared" / "data" / "sst2"))
    if not (data / "train.tsv").is_file():
        sys.exit(f"DISTIL_KIT_SST2={data}: no train.tsv there; point it at the GLUE SST-2 TSV folder")
    return {**os.environ, "DISTIL_KIT_SST2": str(data), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def results(folder: Path) -> dict[str, str]:
    """mutmut's verdict per mutant name, from the module's copy."""
    if not (folder / "mutants").is_dir():
        return {}
    out = subprocess.run(
        ["mutmut", "results", "--all", "true"], cwd=folder, check=True, capture_output=True, text=True
    ).stdout
    return dict(line.strip().rsplit(": ", 1) for line in out.splitlines() if "__mutmut_" in line)


def score(module: str, patterns: list[str], status: dict[str, str], equivalent: dict[str, str]) -> dict:
    names = sorted(n for n in status if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    same = [n for n in names if n in equivalent]
    live = [n for n in names if n not in equivalent]
    killed = sum(status[n] == "killed" for n in live)
    return {
        "module": module,
        "mutants": len(names),
        "killed": killed,
        "equivalent": len(same),
        "survived": [n for n in live if status[n] in SURVIVED],
        "other": [n for n in live if status[n] not in SURVIVED | {"killed"}],  # timeouts, suspicious, unchecked
        # called equivalent yet killed: the entry names another mutant now (mutmut numbers them anew when the
        # function changes), so it may be hiding a real one
        "misnamed": [n for n in same if status[n] == "killed"],
        "score": killed / len(live) if live else 1.0,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| module | mutants | killed | equivalent | survived | other | killed / non-equivalent |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| `{r['module']}` | {r['mutants']} | {r['killed']} | {r['equivalent']} | {len(r['survived'])} | "
            f"{len(r['other'])} | {100 * r['score']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    known = modules()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(known))
    parser.add_argument("--all", action="store_true", help="every module")
    parser.add_argument("--no-run", action="store_true", help="score the results mutmut already has")
    parser.add_argument("--table", type=Path, help="also write the score table (markdown) here")
    parser.add_argument("--goal", type=float, default=0.9, help="the least score a module may have (default 0.9)")
    args = parser.parse_args(argv)
    chosen = list(known) if args.all else args.modules
    unknown = [m for m in chosen if m not in known]
    if unknown or not chosen:
        parser.error(f"name modules among {', '.join(known)}, or --all (got {', '.join(unknown) or 'none'})")
    equivalent = yaml.safe_load(EQUIVALENT.read_text()) or {}
    rows, status = [], {}
    for module in chosen:
        entry = known[module]
        folder = WORK / module if args.no_run else stage(module, entry)
        if not args.no_run:
            subprocess.run(["mutmut", "run", *entry["mutants"]], cwd=folder, check=True, env=test_environment())
        found = results(folder)
        status |= found
        rows.append(score(module, entry["mutants"], found, equivalent))
    stale = sorted(n for n in equivalent if n.split(".")[1] in chosen and n not in status)
    if stale:  # a reason kept for a mutant mutmut no longer makes: the code moved; say so rather than count it
        print(f"mutation_equivalent.yaml names mutants mutmut does not make: {', '.join(stale)}", file=sys.stderr)
    text = table(rows)
    print(text)
    for r in rows:
        for name in r["survived"] + r["other"]:
            print(f"{status[name]}: {name}   (cd .mutation/{r['module']} && mutmut show {name})")
        for name in r["misnamed"]:
            print(f"killed, yet named equivalent in {EQUIVALENT.name}: {name} (still the mutant its reason means?)")
    if args.table:
        args.table.write_text(text)
    return 0 if all(r["score"] >= args.goal and not r["other"] and not r["misnamed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
