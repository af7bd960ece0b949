"""`python -m delta_actors`: the delta-actors command."""

from delta_actors.ops.cli import main

main()
