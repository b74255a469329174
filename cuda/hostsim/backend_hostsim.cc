/*
 * backend_hostsim.cc - cuda/backend/cuda_backend.cu itself, compiled as C++ against the host
 * simulator's CUDA, cuBLAS and NCCL headers (include/): the code under test is the backend's
 * own source, not a copy.
 */
#include "cuda_backend.cu"
