"""`python -m node` does what the `segnode` console script does."""

from node.cli import main

raise SystemExit(main())
