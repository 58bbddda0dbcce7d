"""``python -m rigsim`` (with simulations/ on the path): the same as ``rigmesh sim``."""

from rigsim.cli import main

raise SystemExit(main())
