"""`python -m feedcli ...` (and `torchrun -m feedcli ...`): the `feed` command."""

from feedcli.cli import main

main()
