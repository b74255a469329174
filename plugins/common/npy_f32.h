/*
 * npy_f32.h - reading and writing 2-D float32 NPY arrays, the codebook format of the
 * plugins that `sensorium fit` trains (plugins/common; a plugin links nothing of the engine,
 * so it carries this small reader of its own).
 */
#ifndef SN_PU_NPY_F32_H
#define SN_PU_NPY_F32_H

#include <stddef.h>

/*
 * Reads a C-order '<f4' or '<f8' array of shape (rows, cols) (a 1-D array reads as (n, 1)).
 * On success *data is malloc'ed (rows * cols floats) and 0 is returned; on failure -1 and a
 * one-line reason in why (without the path; the caller names the file).
 */
int sn_pu_npy_read_f32(const char *path, float **data, size_t *rows, size_t *cols, char *why,
                       size_t why_len);

/* Writes data (rows, cols) as '<f4'. 0, or -1 with the reason in why. */
int sn_pu_npy_write_f32(const char *path, const float *data, size_t rows, size_t cols,
                        char *why, size_t why_len);

#endif /* SN_PU_NPY_F32_H */
