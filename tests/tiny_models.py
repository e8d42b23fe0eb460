"""The tests' tiny random-weight checkpoints: the builders live in the package
(`dlcr_cli.bench.tiny`, which `dlcr bench smoke` also uses); this module keeps the tests'
`from tiny_models import ...` working."""

from __future__ import annotations

from dlcr_cli.bench.tiny import *  # noqa: F403
from dlcr_cli.bench.tiny import __all__  # noqa: F401
