/*
 * hostsim.h - what the simulated kernels (hostsim_kernels.cc) need of the simulated runtime
 * (hostsim_rt.cc): enqueue an operation on a stream. Outside a capture it runs at once (a
 * stream's order is then the program's order); inside one it is recorded into the graph, with
 * its scalars and pointers as they are now and the memory they point to read when the graph
 * is launched, as on a GPU.
 */
#ifndef SN_HOSTSIM_H
#define SN_HOSTSIM_H

#include <functional>

#include "cuda_runtime.h"

/* Runs (or records) op; an error it returns when it runs is reported by the next
 * cudaStreamSynchronize, cudaDeviceSynchronize or cudaGetLastError. */
cudaError_t sn_sim_enqueue(cudaStream_t stream, std::function<cudaError_t()> op);

/* Says on stderr, in one line, why a simulated operation failed. */
void sn_sim_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* SN_HOSTSIM_H */
