import sys

from fieldcraft.cli import main

sys.exit(main())
