import sys

from edge_inspector.cli import main

sys.exit(main())
