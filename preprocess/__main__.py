"""`python -m preprocess ...` (see preprocess/cli.py)."""
import sys

from .cli import main

sys.exit(main())
