"""The CUDA C++ extension.

The source list (sources.py), the JIT / ahead-of-time build (build.py), the launcher pair of the one op's
"cuda-tc" / "cuda-simt" implementations (launch.py) and the CPU emulator (emulator.py).
"""
