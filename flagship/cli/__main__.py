"""`python -m flagship.cli` runs the command line."""
from flagship.cli import main

main()
