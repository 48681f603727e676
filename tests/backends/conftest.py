"""Make ``tests/`` importable so that the tests here can use ``servers.fake_openai``."""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))
