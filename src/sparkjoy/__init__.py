"""sparkjoy: keeps a Docker host's disk from filling up.

The library in four calls::

    from datetime import timedelta
    from sparkjoy import DockerEngine, Executor, Policy, plan

    engine = DockerEngine.connect()                 # DOCKER_HOST, context or default socket
    snapshot = engine.snapshot()                    # what the engine holds, as immutable values
    the_plan = plan(snapshot, Policy(max_age=timedelta(hours=6)), now=snapshot.taken_at)
    result = Executor(engine).execute(the_plan)     # deletes exactly the plan, re-checking each object
"""

__version__ = "0.1.0"

from .engine.docker_engine import DockerEngine  # noqa: E402
from .errors import ExitCode, SparkjoyError  # noqa: E402
from .executor import Executor, Outcome, RunResult  # noqa: E402
from .planner import Decision, Memory, Plan, plan  # noqa: E402
from .policy import LabelSelector, Policy, VolumeMode  # noqa: E402

__all__ = [
    "DockerEngine", "Decision", "Executor", "ExitCode", "LabelSelector", "Memory", "Outcome",
    "Plan", "Policy", "RunResult", "SparkjoyError", "VolumeMode", "plan", "__version__",
]
