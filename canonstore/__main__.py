"""`python -m canonstore`: the command line, as the `canonstore` script."""

from canonstore.cli import main

main()
