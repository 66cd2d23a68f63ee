"""The driver behind scripts/demo (run that instead: it installs what this needs).

Starts a throw-away Docker engine (tests/engine.py's IsolatedEngine: a private dockerd
with its own data root, socket and network namespace), fills it with the kind of mess a
real build host collects, then runs sparkjoy against it: df, a dry run, a real prune, df
again. The engine is stopped and its temporary directory removed however this ends.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.engine import IsolatedEngine  # noqa: E402

DOCKER = "/usr/bin/docker"  # the docker.io CLI: it can build with BuildKit (see docs)
BUSYBOX = "/bin/busybox"  # static, from busybox-static: runs in an image FROM scratch
SPARKJOY = ROOT / ".venv" / "bin" / "sparkjoy"
# Everything here is brand new, so sparkjoy judges ages as of this much later: with the
# default max age of 6h, that makes the old things old.
LATER = timedelta(hours=7)

BASE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /usr/lib/runtime && dd if=/dev/urandom of=/usr/lib/runtime/lib.bin bs=1M count=12 2>/dev/null
"""

APP = """\
FROM demo/base:1
LABEL project={project}
ARG RELEASE
RUN mkdir /app && dd if=/dev/urandom of=/app/bundle.bin bs=1M count={mb} 2>/dev/null && echo $RELEASE > /app/release
CMD ["sleep", "3600"]
"""


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class DemoFailed(Exception):
    pass


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say()
    say("=" * 100)
    say(title)
    say("=" * 100)


class Demo:
    def __init__(self, engine: IsolatedEngine):
        self.engine = engine
        self.work = engine.tmpdir / "demo"
        self.work.mkdir()
        self.env = engine.env()
        self.env["DOCKER_BUILDKIT"] = "1"
        self.env["DOCKER_CONFIG"] = str(self.work / "docker-config")  # no user config, no contexts
        self.builds = 0
        self.failures: list[str] = []

    # -- making the mess ----------------------------------------------------------------

    def docker(self, *args: str) -> str:
        result = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise DemoFailed(f"scripts/demo: `docker {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")
        return result.stdout.strip()

    def build(self, dockerfile: str, *tags: str, release: str = "") -> str:
        self.builds += 1
        context = self.work / f"build{self.builds}"
        context.mkdir()
        shutil.copy2(BUSYBOX, context / "busybox")  # keeps it executable
        (context / "Dockerfile").write_text(dockerfile)
        args = ["build", "-q", "--build-arg", f"RELEASE={release}"]
        for tag in tags:
            args += ["-t", tag]
        image = self.docker(*args, str(context))
        say(f"  built {', '.join(tags):<34} {image.split(':')[-1][:12]}  (release {release or '-'})")
        return image

    def make_mess(self) -> None:
        say("A shared base image (FROM scratch + busybox + 12MB of runtime), built with BuildKit:")
        self.build(BASE, "demo/base:1")

        say("\nProject shop (label project=shop): four releases of shop/web, each tagged, the last also :latest;")
        say("shop/worker rebuilt three times under the same tag, so two builds are left dangling:")
        for release in ("1.0", "1.1", "1.2"):
            self.build(APP.format(project="shop", mb=8), f"shop/web:{release}", release=release)
        self.build(APP.format(project="shop", mb=8), "shop/web:1.3", "shop/web:latest", release="1.3")
        for n in (1, 2, 3):
            self.build(APP.format(project="shop", mb=5), "shop/worker:latest", release=f"worker-{n}")

        say("\nProject blog (label project=blog): blog/app rebuilt three times under :latest:")
        first_blog = self.build(APP.format(project="blog", mb=6), "blog/app:latest", release="2024-01")
        say("  a one-off container ran a migration on that first build and exited (it still pins the image),")
        say("  writing 3MB to the named volume blog-uploads and a 1MB log to its own container layer")
        self.docker("volume", "create", "--label", "project=blog", "blog-uploads")
        self.docker("run", "--name", "blog-migrate", "--label", "project=blog", "--network", "none",
                    "-v", "blog-uploads:/uploads", first_blog,
                    "sh", "-c", "dd if=/dev/urandom of=/uploads/media.bin bs=1M count=3 2>/dev/null && "
                    "mkdir -p /var/log && dd if=/dev/urandom of=/var/log/migrate.log bs=1M count=1 2>/dev/null")
        self.build(APP.format(project="blog", mb=6), "blog/app:latest", release="2024-02")
        self.build(APP.format(project="blog", mb=6), "blog/app:latest", release="2024-03")

        say("\nContainers: shop-web running from shop/web:latest; shop-worker created from shop/worker but never started")
        self.docker("run", "-d", "--name", "shop-web", "--label", "project=shop", "--network", "none",
                    "--stop-signal", "SIGKILL", "shop/web:latest")
        self.docker("create", "--name", "shop-worker", "--label", "project=shop", "--network", "none",
                    "shop/worker:latest")
        say("\nBuildKit kept its build cache for all of those builds.")

    # -- showing sparkjoy ---------------------------------------------------------------

    def sparkjoy(self, *args: str) -> int:
        command = [str(SPARKJOY), *args, "--host", self.engine.host, "--as-of", self.as_of]
        say(f"\n$ sparkjoy {' '.join(shlex.quote(a) for a in args)} --host {self.engine.host} --as-of {self.as_of}")
        env = dict(os.environ)
        env = {k: v for k, v in env.items() if not k.startswith("SPARKJOY_")}
        # The demo's policy is sparkjoy's defaults, whatever the user's own config file says.
        env["SPARKJOY_CONFIG"] = str(self.empty_config)
        # Its memory (first sightings, the history cache) goes with the demo engine, never
        # into this machine's own state database.
        env["XDG_STATE_HOME"] = str(self.work / "state")
        code = subprocess.run(command, env=env).returncode
        if code != 0:
            self.failures.append(f"sparkjoy {args[0]} exited with {code}")
        return code

    def show(self) -> None:
        self.as_of = (datetime.now(timezone.utc) + LATER).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        self.empty_config = self.work / "sparkjoy.toml"
        self.empty_config.write_text("# the demo runs with sparkjoy's default policy\n")

        step("1. sparkjoy df: where did the space go?")
        say(f"Everything here was made seconds ago, so each command judges ages with --as-of {self.as_of},")
        say(f"{LATER.seconds // 3600} hours from now: as if this host had been left alone since. The policy is sparkjoy's default:")
        say("an image is old 6h after its last tag, the 2 newest old images per repository stay, stopped")
        say("containers and build cache unused for 6h go, volumes stay unless --volumes is given.")
        self.sparkjoy("df")

        step("2. sparkjoy prune --dry-run: what would go, and why? (-v: every object, kept ones too)")
        self.sparkjoy("prune", "--dry-run", "-v")

        step("3. sparkjoy prune -f: do it (-f skips the confirmation question; nothing is ever force-deleted)")
        code = self.sparkjoy("prune", "-f")
        if code != 0:
            say(f"(sparkjoy prune exited with {code})")

        step("4. sparkjoy df again")
        self.sparkjoy("df")
        if self.failures:
            raise DemoFailed("scripts/demo: " + "; ".join(self.failures))


def main() -> int:
    if os.geteuid() != 0:
        say("scripts/demo: needs root to start its own dockerd (try: sudo bash scripts/demo)")
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    started = time.monotonic()
    engine = IsolatedEngine()
    try:
        say(f"Starting a throw-away Docker engine at {engine.host} (the machine's own engine is not touched)...")
        engine.start()
        demo = Demo(engine)
        step("Filling it with a realistic mess")
        demo.make_mess()
        demo.show()
        say(f"\nDemo done in {time.monotonic() - started:.0f}s.")
        return 0
    except DemoFailed as error:
        say(str(error))
        return 1
    except (KeyboardInterrupt, Interrupted) as interruption:
        say(f"\nscripts/demo: interrupted ({str(interruption) or 'Ctrl-C'}).")
        return 128 + getattr(interruption, "signum", signal.SIGINT)
    finally:
        # A second Ctrl-C must not leave a dockerd behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        say(f"Stopping the demo engine and removing {engine.tmpdir} ...")
        engine.stop()


if __name__ == "__main__":
    sys.exit(main())
