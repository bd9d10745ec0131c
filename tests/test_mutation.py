"""The mutation check's own plumbing (benchmarks/mutation.py): which tests judge each module, the per-module copy
mutmut runs in, and the score it reports. Running mutmut itself takes minutes per module: README, Tests."""

import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import mutation  # noqa: E402

CORE = ["stats", "compare", "progress", "sweep", "resuming", "records", "recipe", "batching", "data", "micro_batch"]


def test_every_core_module_is_judged_by_test_files_that_exist():
    modules = mutation.modules()
    assert set(CORE + ["notebook"]) <= set(modules)
    for name, entry in modules.items():
        assert (ROOT / "distil_kit" / f"{name}.py").is_file(), name
        assert entry["tests"] and all((ROOT / t).is_file() for t in entry["tests"]), (name, entry["tests"])
        assert all(p.startswith(f"distil_kit.{name}.") for p in entry["mutants"]), (name, entry["mutants"])


def test_reasons_for_equivalent_mutants_name_mutants_of_judged_modules():
    reasons = yaml.safe_load(mutation.EQUIVALENT.read_text()) or {}
    modules = mutation.modules()
    for name, reason in reasons.items():
        assert name.split(".")[1] in modules and "__mutmut_" in name, name
        assert isinstance(reason, str) and len(reason) > 20, f"{name}: say why no user could observe it"


def test_score_leaves_equivalent_mutants_out_and_counts_untested_ones_as_survivors():
    status = {
        "distil_kit.stats.x_a__mutmut_1": "killed",
        "distil_kit.stats.x_a__mutmut_2": "killed",
        "distil_kit.stats.x_a__mutmut_3": "survived",  # equivalent, below
        "distil_kit.stats.x_a__mutmut_4": "killed",  # named equivalent below, yet killed: the name moved
        "distil_kit.stats.x_b__mutmut_1": "no tests",
        "distil_kit.stats.x_b__mutmut_2": "timeout",
        "distil_kit.stats.x_c__mutmut_1": "survived",  # not counted: outside the pattern
        "distil_kit.compare.x_a__mutmut_1": "survived",  # another module
    }
    row = mutation.score(
        "stats",
        ["distil_kit.stats.x_a__*", "distil_kit.stats.x_b__*"],
        status,
        {"distil_kit.stats.x_a__mutmut_3": "why", "distil_kit.stats.x_a__mutmut_4": "why"},
    )
    assert (row["mutants"], row["killed"], row["equivalent"]) == (6, 2, 2)
    assert row["misnamed"] == ["distil_kit.stats.x_a__mutmut_4"]
    assert row["survived"] == ["distil_kit.stats.x_b__mutmut_1"] and row["other"] == [
        "distil_kit.stats.x_b__mutmut_2"
    ]
    assert row["score"] == pytest.approx(2 / 4)
    assert "| `stats` | 6 | 2 | 2 | 1 | 1 | 50.0% |" in mutation.table([row])


def test_a_module_runs_in_its_own_copy_configured_for_it_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(mutation, "WORK", tmp_path)
    entry = mutation.modules()["data"]
    folder = mutation.stage("data", entry)
    assert folder == tmp_path / "data"
    assert (folder / "distil_kit" / "data.py").read_text() == (ROOT / "distil_kit" / "data.py").read_text()
    config = tomllib.loads((folder / "pyproject.toml").read_text())
    settings = config["tool"]["mutmut"]
    assert settings["only_mutate"] == ["distil_kit/data.py"]
    assert settings["pytest_add_cli_args_test_selection"] == [*entry["tests"], "-m", "not gpu and not slow"]
    shared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    assert {k: settings[k] for k in shared} == shared  # the shared settings stay, with their types
    assert config["tool"]["pytest"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    (folder / "distil_kit" / "stale.py").write_text("")  # a file the checkout no longer has does not linger
    mutation.stage("data", entry)
    assert not (folder / "distil_kit" / "stale.py").exists()


def test_unknown_modules_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        mutation.main(["statz"])
    assert stop.value.code == 2
    assert "name modules among stats, compare" in capsys.readouterr().err
