"""The CUDA C++ extension: JIT build (build.py) and its torch op / autograd wrapper (function.py)."""
