"""sparkjoy's benchmark suite: see bench/README.md. Run it with `bench/run`."""
