// relattn_bwd_fused.cu compiled for the CPU emulator (see emu_api.cpp): one translation unit per kernel source, so that
// the emulator's build compiles them in parallel.
#ifndef NEZHA_CUDA_EMULATE
#error "emu_kernels_bwd_fused.cpp builds the CPU emulation: compile with -DNEZHA_CUDA_EMULATE"
#endif

#include "../relattn_bwd_fused.cu"
