"""`python -m sparkjoy ...`: the same as the `sparkjoy` command."""

from .cli import main

main()
