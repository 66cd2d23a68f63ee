"""`python -m sparkjoy` is the `sparkjoy` command, every subcommand included."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_sparkjoy_is_the_whole_command() -> None:
    done = subprocess.run([sys.executable, "-m", "sparkjoy", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("df", "prune", "config", "run", "build", "notify"):
        assert f"  {command}" in done.stdout, (command, done.stdout)


def test_the_sdk_is_not_imported_at_start_up_and_paramiko_only_when_an_engine_is_reached_over_ssh() -> None:
    """A local engine is reached without the Docker SDK (engine/transport.py), so a command's
    start-up imports neither it nor requests (0.09 s), nor the daemon's commands (0.02 s), whose config
    keys it knows without their HTTP server and metrics. Where the SDK is used, sparkjoy.engine.sdk
    defers paramiko, for ssh:// engines, to its first use, and that use gets the real module."""
    script = (
        "import sys, sparkjoy.cli\n"
        "from sparkjoy.engine.connect import resolve\n"
        "resolve(None, {'DOCKER_HOST': 'unix:///var/run/docker.sock'})\n"
        "assert 'docker' not in sys.modules and 'requests' not in sys.modules, 'the SDK was imported at start-up'\n"
        "assert 'sparkjoy.cli_daemon' not in sys.modules, 'the daemon commands were loaded for another command'\n"
        "settings = sparkjoy.cli._load({'config_path': None})\n"
        "assert 'daemon.state_db' in settings.values, 'the [daemon] keys are unknown to other commands'\n"
        "assert 'prometheus_client' not in sys.modules and 'sparkjoy.daemon.http' not in sys.modules, 'with them the server'\n"
        "assert sparkjoy.cli.main.get_command(None, 'run') is not None and 'sparkjoy.cli_daemon' in sys.modules\n"
        "import sparkjoy.engine.sdk\n"
        "assert 'docker' in sys.modules and 'paramiko.transport' not in sys.modules, 'paramiko was imported'\n"
        "from docker.transport import sshconn\n"
        "policy = sshconn.paramiko.RejectPolicy\n"
        "assert 'paramiko.transport' in sys.modules and type(sys.modules['paramiko']).__name__ == 'module'\n"
        "import paramiko\n"
        "assert paramiko.RejectPolicy is policy and paramiko.SSHClient.__module__ == 'paramiko.client'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
