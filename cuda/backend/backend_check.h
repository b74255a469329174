/*
 * backend_check.h - cuBLAS and NCCL counterparts of cuda_check.h's CUDA_CHECK: a failure
 * writes "file:line: stmt: error" to msg and returns -1 from the enclosing function, which
 * must have `char *msg, size_t msg_len` in scope.
 */
#ifndef SN_BACKEND_CHECK_H
#define SN_BACKEND_CHECK_H

#include <cublas_v2.h>
#include <stdio.h>

#include "cuda_check.h"

#define BLAS_CHECK(stmt)                                                                       \
    do {                                                                                       \
        cublasStatus_t blas_check_st_ = (stmt);                                                \
        if (blas_check_st_ != CUBLAS_STATUS_SUCCESS) {                                         \
            snprintf(msg, msg_len, "%s:%d: %s: %s (%s)", __FILE__, __LINE__, #stmt,            \
                     cublasGetStatusString(blas_check_st_), cublasGetStatusName(blas_check_st_)); \
            return -1;                                                                         \
        }                                                                                      \
    } while (0)

#ifndef SN_CUDA_NO_NCCL
#include <nccl.h>
#define NCCL_CHECK(stmt)                                                                       \
    do {                                                                                       \
        ncclResult_t nccl_check_st_ = (stmt);                                                  \
        if (nccl_check_st_ != ncclSuccess) {                                                   \
            snprintf(msg, msg_len, "%s:%d: %s: %s", __FILE__, __LINE__, #stmt,                 \
                     ncclGetErrorString(nccl_check_st_));                                      \
            return -1;                                                                         \
        }                                                                                      \
    } while (0)
#endif

#endif /* SN_BACKEND_CHECK_H */
