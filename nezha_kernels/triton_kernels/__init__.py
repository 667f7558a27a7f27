"""Triton kernels of the fused relative attention (forward, backward) and their launchers.

Importing this package imports triton; the backend module imports it lazily so that the package
works without triton. Layers: kernels (forward.py, backward.py + backward_dq.py + backward_dkdv.py, shared pieces in
band.py, philox.py) -> launchers (launch.py), the "triton" implementation of the one op (nezha_kernels/ops.py).
"""
