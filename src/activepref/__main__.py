"""`python -m activepref` runs the command line."""

from activepref.cli import main

main()
