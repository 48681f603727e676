import sys
from pathlib import Path

# tiny_models, servers and apl_helpers live beside the tests
HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
