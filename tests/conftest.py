import os

# Triton kernels run on CPU tensors under the interpreter; it must be set before triton is imported.
# On a GPU machine benchmarks/gpu_check.sh sets LIGHTFMP_GPU_TESTS=1 so the same tests run the real kernels.
if os.environ.get("LIGHTFMP_GPU_TESTS") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
