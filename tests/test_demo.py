"""scripts/demo runs end to end on a throw-away engine of its own and cleans up after itself.

It is the README's "no engine to try it on?" answer, so it must keep working: the mess is
made, df, a dry run, a real prune and df again all succeed, and the engine's temporary
directory (data root, socket) is gone afterwards. The machine's own engine is never used:
every sparkjoy command gets `--host` (checked in the printed commands).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_shows_df_a_dry_run_a_prune_and_df_again_then_removes_its_engine(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "SPARKJOY_", "XDG_STATE"))}
    env["HOME"] = str(tmp_path)  # no user config of docker or sparkjoy
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    for heading in ("1. sparkjoy df", "2. sparkjoy prune --dry-run", "3. sparkjoy prune -f", "4. sparkjoy df again"):
        assert heading in out, heading
    assert "DRY RUN: nothing is deleted." in out
    assert re.search(r"Removed: \d+ container", out) and "Total reclaimed space:" in out
    commands = [line for line in out.splitlines() if line.startswith("$ sparkjoy")]
    assert len(commands) == 4 and all("--host unix:///tmp/" in line for line in commands), commands
    removed = re.search(r"Stopping the demo engine and removing (\S+) \.\.\.", out)
    assert removed and not Path(removed.group(1)).exists(), "the demo engine's directory is left behind"
    assert "Traceback" not in out + done.stderr
