"""docker's `--filter` habit gets sparkjoy's own flags in the error, before any engine is contacted."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sparkjoy.cli import main


@pytest.mark.parametrize("command", [["prune", "--dry-run"], ["prune", "-f"], ["df"]])
def test_a_docker_filter_is_a_usage_error_naming_the_flags_to_use(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--filter", "until=24h", "--host", "unix:///nonexistent.sock"])
    assert result.exit_code == 2
    assert "sparkjoy has no --filter (until=24h)" in result.output
    assert "--max-age D" in result.output and "--label K=V" in result.output
    assert "cannot reach" not in result.output  # refused before the engine is asked


def test_the_hidden_filter_does_not_reach_configs_settings(tmp_path) -> None:
    runner = CliRunner()
    (tmp_path / "c.toml").write_text("")
    plain = runner.invoke(main, ["config", "--max-age", "2d", "--config", str(tmp_path / "c.toml")])
    assert plain.exit_code == 0 and "max_age = \"2d\"" in plain.output
    assert not any("filter" in line for line in plain.output.splitlines()[1:])
    refused = runner.invoke(main, ["config", "--filter", "label=a=b"])
    assert refused.exit_code == 2 and "--label K=V" in refused.output
    # `build` passes docker's own --filter through untouched (it has no policy options).
    assert "--filter" not in [p for c in ("build", "notify") for o in main.commands[c].params for p in o.opts]
