"""`python -m sparkjoy` is the `sparkjoy` command, every subcommand included."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_sparkjoy_is_the_whole_command() -> None:
    done = subprocess.run([sys.executable, "-m", "sparkjoy", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("df", "prune", "config", "run", "build", "notify"):
        assert f"  {command}" in done.stdout, (command, done.stdout)


def test_paramiko_is_imported_only_when_an_engine_is_reached_over_ssh() -> None:
    """The SDK imports paramiko for ssh:// engines; sparkjoy defers that (0.1 s of every start)
    to the first use, and that use gets the real module."""
    script = (
        "import sys, sparkjoy.cli\n"
        "assert 'paramiko.transport' not in sys.modules, 'paramiko was imported at start-up'\n"
        "from docker.transport import sshconn\n"
        "policy = sshconn.paramiko.RejectPolicy\n"
        "assert 'paramiko.transport' in sys.modules and type(sys.modules['paramiko']).__name__ == 'module'\n"
        "import paramiko\n"
        "assert paramiko.RejectPolicy is policy and paramiko.SSHClient.__module__ == 'paramiko.client'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
