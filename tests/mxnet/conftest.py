"""tests/mxnet runs in its own virtual environment (``bash .ci/mxnet``: MXNet 1.9 needs
numpy < 1.24). Elsewhere mxnet is absent and this folder is skipped, unless
STREAMLEARN_REQUIRE_MXNET=1 (set by .ci/mxnet), where a missing mxnet is a failure."""
import importlib.util
import os

if importlib.util.find_spec("mxnet") is None and os.environ.get("STREAMLEARN_REQUIRE_MXNET") != "1":
    collect_ignore_glob = ["test_*.py"]
