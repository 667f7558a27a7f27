import sys
from pathlib import Path

# Make `tests/formula.py` importable as `formula` and the package importable from a plain checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
