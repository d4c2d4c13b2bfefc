"""``python -m mlplatform.team``: ``mlplatform server`` before it is wired into the main CLI."""

from mlplatform.team.cli import main

main()
