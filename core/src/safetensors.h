/*
 * safetensors.h - one .safetensors file, memory-mapped read-only, its header parsed and every
 * tensor's dtype, shape and byte range checked against the file before anything reads it.
 *
 * Stage of the pipeline: the bottom of loading. model_loader.c opens one of these per file
 * (one, or one per shard) and binds the tensors it finds here to the model's slots.
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

#endif /* SN_SAFETENSORS_H */
