/*
 * cuda_check.h - every CUDA runtime call in cuda/ goes through CUDA_CHECK, which turns a
 * failure into a status plus a message naming the statement, file and line. Kernel launches
 * are followed by CUDA_CHECK(cudaGetLastError()).
 */
#ifndef SN_CUDA_CHECK_H
#define SN_CUDA_CHECK_H

#include <cuda_runtime.h>
#include <stdio.h>

/* Writes "file:line: stmt: cuda error text" to msg and returns -1 from the enclosing
 * function, which must have `char *msg, size_t msg_len` in scope. */
#define CUDA_CHECK(stmt)                                                                   \
    do {                                                                                   \
        cudaError_t cuda_check_err_ = (stmt);                                              \
        if (cuda_check_err_ != cudaSuccess) {                                              \
            snprintf(msg, msg_len, "%s:%d: %s: %s (%s)", __FILE__, __LINE__, #stmt,        \
                     cudaGetErrorString(cuda_check_err_), cudaGetErrorName(cuda_check_err_)); \
            return -1;                                                                     \
        }                                                                                  \
    } while (0)

#endif /* SN_CUDA_CHECK_H */
