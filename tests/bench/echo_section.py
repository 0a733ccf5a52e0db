"""A stand-in bench section for `tests/bench/test_child.py`: notes, then its JSON line."""

import json
import sys

print("warming up")
print(json.dumps({"args": sys.argv[1:], "figure": 1.5}))
