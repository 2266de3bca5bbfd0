"""`python -m bench` runs the CLI."""

from bench.cli.app import main

main()
