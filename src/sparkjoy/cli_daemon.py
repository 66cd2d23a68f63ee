"""Command-line commands of the long-running service (`sparkjoy run`, `sparkjoy build`).

Registered on ``cli.main`` when ``cli`` is imported.
"""
