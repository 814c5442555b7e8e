import atexit
import os

from lightfmp.scratch import scratch_dir

# The tests never read the user's cache and must not fill it: $LIGHTFMP_HOME (where a streamed run without
# --shard-dir writes its shards and fit caches) is a folder of this test session's own, removed at its end: a claimed
# scratch folder in the system's temporary directory, so that a session killed outright leaves it to the next one
_HOME_FOLDER = scratch_dir("lightfmp-tests-home-")
os.environ["LIGHTFMP_HOME"] = str(_HOME_FOLDER.__enter__())
atexit.register(_HOME_FOLDER.__exit__, None, None, None)

# Triton kernels run on CPU tensors under the interpreter; it must be set before triton is imported.
# On a GPU machine benchmarks/gpu_check.sh sets LIGHTFMP_GPU_TESTS=1 so the same tests run the real kernels.
if os.environ.get("LIGHTFMP_GPU_TESTS") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
