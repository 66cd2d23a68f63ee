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
