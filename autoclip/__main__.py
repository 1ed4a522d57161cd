"""``python -m autoclip`` runs the command line."""

from autoclip.cli import main

main()
