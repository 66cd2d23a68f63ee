"""`python -m sparkjoy` is the `sparkjoy` command, every subcommand included."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_sparkjoy_is_the_whole_command() -> None:
    done = subprocess.run([sys.executable, "-m", "sparkjoy", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("df", "prune", "config", "run", "build", "notify"):
        assert f"  {command}" in done.stdout, (command, done.stdout)
