"""`python -m dlcr_cli` (and `accelerate launch -m dlcr_cli`) runs the same app as `dlcr`."""

from dlcr_cli.cli import main

main()
