/*
 * device.cu - what the core asks the CUDA library before using it: how many GPUs there are
 * and what they are. A machine without a driver or a device answers with a reason, never a
 * crash, so that the engine can fall back to the CPU backend and say why in one line.
 */
#include <cuda_runtime.h>
#include <stdio.h>

#include "cuda_check.h"

extern "C" __attribute__((visibility("default"))) int sn_cuda_probe(char *msg, size_t msg_len)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
        snprintf(msg, msg_len, "no usable CUDA device: %s", cudaGetErrorString(err));
        return 0;
    }
    CUDA_CHECK(err);
    int len = 0;
    msg[0] = '\0';
    for (int d = 0; d < count && (size_t)len < msg_len; d++) {
        cudaDeviceProp prop;
        CUDA_CHECK(cudaGetDeviceProperties(&prop, d));
        len += snprintf(msg + len, msg_len - (size_t)len, "%sGPU %d: %s, sm_%d%d, %.1f GiB",
                        d ? "; " : "", d, prop.name, prop.major, prop.minor,
                        (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    }
    return count;
}
