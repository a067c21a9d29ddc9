import sys

from sdviz.cli import main

sys.exit(main())
