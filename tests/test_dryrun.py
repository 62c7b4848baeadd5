"""`snakemake -n --configfile <file>` plans the whole chain with no data, results or Caffe build present.

Each run happens in a fresh copy of the workflow (no results/, resources/ or logs/), so nothing
that a dry-run needs may come from an earlier run.
"""

from __future__ import annotations

import json
import shlex

import pytest

from tests.support.workflow_run import copy_workflow, output_tail, planned_rules, run_snakemake

# Config files that must plan with no data present, and the rules each plan must contain.
DRY_RUNS = {
    "config/config.yaml": ["caffe_build", "export", "export_int8", "report_export", "report_int8", "report_model"],
    "config/coco.yaml": ["caffe_build", "fetch_initial_weights", "convert_initial_weights", "train"],
    "config/coco-scratch.yaml": ["caffe_build", "train"],
}


@pytest.mark.parametrize("configfile", sorted(DRY_RUNS))
def test_dry_run_plans_the_chain_without_data(repo_root, tmp_path, configfile):
    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    result = run_snakemake(workdir, ["-n", "--cores", "1", "--configfile", configfile])
    assert result.returncode == 0, f"snakemake -n --configfile {configfile}:\n{output_tail(result)}"
    plan = planned_rules(result.stdout)
    missing = [rule for rule in DRY_RUNS[configfile] if rule not in plan]
    assert not missing, f"{configfile}: the plan lacks {missing}; it has {plan}"
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


def test_misspelled_config_key_stops_the_run_with_one_line(repo_root, tmp_path):
    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    (workdir / "typo.yaml").write_text("resorces:\n  default:\n    mem_mb: 1000\n")
    result = run_snakemake(workdir, ["-n", "--cores", "1", "--configfile", "typo.yaml"])
    assert result.returncode != 0
    expected = "error: config key 'resorces' is not known (in section 'root'); did you mean 'resources'?"
    lines = (result.stdout + result.stderr).splitlines()
    assert expected in lines, f"no one-line error naming the key:\n{output_tail(result)}"
    assert not any(line.lstrip().startswith("File ") for line in lines), "a traceback was printed"


def _model_settings(workdir, *args: str) -> dict:
    """The `model` and `solver` sections that rule make_model would get, read off `snakemake -n -p`."""
    import json
    import shlex

    result = run_snakemake(workdir, ["-n", "-p", "--cores", "1", "results/model/model_config.json", *args])
    assert result.returncode == 0, output_tail(result)
    command = next(line for line in result.stdout.splitlines() if "make_model.py" in line)
    words = shlex.split(command)
    values = {word.split("=", 1)[0]: word.split("=", 1)[1] for word in words if word.startswith("--") and "=" in word}
    return {"model": json.loads(values["--model-settings"]), "solver": json.loads(values["--solver-settings"])}


def test_a_user_config_is_merged_over_the_schema_defaults_not_over_the_demo(repo_root, tmp_path):
    import yaml

    from ssdlite_coco.common.config import schema_default

    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    demo = _model_settings(workdir)
    assert demo["model"]["bn_moving_average_fraction"] == 0.99  # the demo's own value (config/config.yaml)
    (workdir / "user.yaml").write_text("model:\n  width: 0.75\n")
    coco = _model_settings(workdir, "--configfile", "user.yaml")
    given = yaml.safe_load((workdir / "user.yaml").read_text())
    assert "bn_moving_average_fraction" not in given["model"] and coco["model"]["width"] == 0.75
    assert coco["model"]["bn_moving_average_fraction"] == schema_default("model.bn_moving_average_fraction")
    (workdir / "empty.yaml").write_text("{}\n")
    empty = _model_settings(workdir, "--configfile", "empty.yaml")
    assert empty["solver"] == schema_default("solver") and empty["model"] == schema_default("model")
    assert (workdir / "results" / "config.effective.yaml").exists() is False  # a dry run writes nothing


def test_a_run_from_another_working_directory_plans_the_chain(repo_root, tmp_path):
    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_snakemake(workdir, ["-n", "--cores", "1", "--directory", str(elsewhere)])
    assert result.returncode == 0, output_tail(result)
    assert "caffe_build" in planned_rules(result.stdout)


def test_int8_off_leaves_its_rules_out_of_the_plan(repo_root, tmp_path):
    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    (workdir / "no_int8.yaml").write_text("export:\n  int8: false\n")
    args = ["-n", "--cores", "1", "--configfile", "config/config.yaml", "no_int8.yaml"]
    result = run_snakemake(workdir, args)
    assert result.returncode == 0, output_tail(result)
    plan = planned_rules(result.stdout)
    assert "export" in plan and "report_export" in plan, plan
    assert "export_int8" not in plan and "report_int8" not in plan, plan


def test_the_export_check_and_the_report_have_their_own_score_thresholds(repo_root, tmp_path):
    """Changing the report's drawing threshold must not move the export check's gate, and the other way round."""
    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    config = ["export={match_score_threshold: 0.45}", "evaluate={report_score_threshold: 0.6}"]
    args = ["-n", "-p", "--cores", "1", "--configfile", "config/config.yaml", "--config", *config]
    result = run_snakemake(workdir, args)
    assert result.returncode == 0, output_tail(result)
    commands = {
        script: _command_of(result.stdout, script) for script in ("export.py", "export_int8.py", "plot_report.py")
    }
    thresholds = {
        "export.py": json.loads(_flag(commands["export.py"], "--settings"))["match_score_threshold"],
        "export_int8.py": json.loads(_flag(commands["export_int8.py"], "--settings"))["match_score_threshold"],
        "plot_report.py": json.loads(_flag(commands["plot_report.py"], "--settings"))["report_score_threshold"],
    }
    assert thresholds == {"export.py": 0.45, "export_int8.py": 0.45, "plot_report.py": 0.6}, commands


def _command_of(printed: str, script: str) -> list[str]:
    """The words of the one shell command a dry run prints for ``script``."""
    (command,) = [shlex.split(line) for line in printed.splitlines() if f" {script} " in line]
    return command


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]
