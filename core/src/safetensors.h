/*
 * safetensors.h - one .safetensors file, memory-mapped read-only, its header parsed and every
 * tensor's dtype, shape and byte range checked against the file before anything reads it.
 *
 * Stage of the pipeline: the bottom of loading. model_loader.c opens one of these per file
 * (one, or one per shard) and binds the tensors it finds here to the model's slots.
 * sn_st_write, at the end, writes such a file (extend.c's new model packages).
 *
 * The format: an 8-byte little-endian header length N, N bytes of JSON
 *   {"__metadata__": {...}, "NAME": {"dtype": "F32", "shape": [r, c], "data_offsets": [b, e]}, ...}
 * then the data, with each tensor's bytes at [b, e) counted from the end of the header.
 */
#ifndef SN_SAFETENSORS_H
#define SN_SAFETENSORS_H

#include <stddef.h>

#include "model.h"

typedef struct sn_st_file {
    char *path;         /* owned; the file as named in messages */
    void *map;          /* (size) read-only private mapping of the whole file */
    size_t size;
    sn_tensor *tensors; /* (n) sorted by name; names owned; data points into map or copies */
    size_t n;
    void **copies;      /* (n_copies) aligned copies of tensors the file leaves misaligned */
    size_t n_copies;
} sn_st_file;

/* Maps path and checks its header and every tensor in it. On failure f is left closed (and
 * safe to sn_st_close again), and the message names the file and the tensor. */
sn_status sn_st_open(const char *path, sn_st_file *f);

/* Unmaps the file and frees what sn_st_open allocated; a zeroed f is fine. */
void sn_st_close(sn_st_file *f);

/* The tensor called name, or NULL. */
const sn_tensor *sn_st_find(const sn_st_file *f, const char *name);

/* One tensor to write: its bytes are data (nbytes) followed by tail (tail_bytes), so that a
 * matrix grown by rows is written from its mapped old rows and a buffer of new ones without
 * a copy of the whole. Together they must hold exactly the shape's elements. */
typedef struct sn_st_out {
    const char *name;
    sn_dtype dtype;
    int ndim;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
    const void *tail; /* may be NULL when tail_bytes is 0 */
    size_t tail_bytes;
} sn_st_out;

/* Called after each tensor is written: done of total. */
typedef void (*sn_st_progress_fn)(void *ctx, size_t done, size_t total);

/*
 * Writes n tensors to path as one .safetensors file, in the order given: the header (with
 * "__metadata__" {"format": "pt"}, which Hugging Face loaders expect) padded with spaces to a
 * multiple of 8 so that every tensor stays aligned, then the data back to back. The file is
 * flushed to disk before the call returns. On failure the partial file is removed and the
 * message names the file and, where one is at fault, the tensor. progress may be NULL.
 */
sn_status sn_st_write(const char *path, const sn_st_out *tensors, size_t n, sn_st_progress_fn progress,
                      void *ctx);

#endif /* SN_SAFETENSORS_H */
