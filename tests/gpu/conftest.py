"""tests/gpu needs torch with a CUDA device (run on the GPU machine, see benchmarks/README.md
"GPU"). Skipped elsewhere, unless STREAMLEARN_REQUIRE_GPU=1, where that is a failure."""
import importlib.util
import os

if os.environ.get("STREAMLEARN_REQUIRE_GPU") != "1":
    ok = importlib.util.find_spec("torch") is not None
    if ok:
        import torch
        ok = torch.cuda.is_available()
    if not ok:
        collect_ignore_glob = ["test_*.py"]
