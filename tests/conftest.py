import atexit
import os
import shutil
import tempfile

# The tests never read the user's cache and must not fill it: $LIGHTFMP_HOME (where a streamed run without
# --shard-dir writes its shards and fit caches) is a folder of this test session's own, removed at its end.
_HOME = tempfile.mkdtemp(prefix="lightfmp-tests-home-")
os.environ["LIGHTFMP_HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, True)

# Triton kernels run on CPU tensors under the interpreter; it must be set before triton is imported.
# On a GPU machine benchmarks/gpu_check.sh sets LIGHTFMP_GPU_TESTS=1 so the same tests run the real kernels.
if os.environ.get("LIGHTFMP_GPU_TESTS") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
