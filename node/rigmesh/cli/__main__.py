"""`python -m rigmesh.cli`: the same as the `rigmesh` console script."""

from rigmesh.cli import main

raise SystemExit(main())
