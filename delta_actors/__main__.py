"""`python -m delta_actors`: the delta-actors command."""

from delta_actors.cli import main

main()
