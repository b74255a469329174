/*
 * gguf.h - one GGUF file (version 2 or 3), memory-mapped read-only: its metadata key/values
 * and its tensor directory parsed and checked against the file before anything reads them.
 *
 * Stage of the pipeline: the bottom of loading, beside safetensors.h. The model loader binds
 * a GGUF's tensors to a model's slots and reads its hyper-parameters from the metadata; the
 * text.bpe plugin reads the tokenizer the file carries (tokenizer.ggml.*). This file depends
 * on nothing of the engine, so that plugin links it too: errors are written to a caller's
 * buffer as one line that names the file.
 *
 * The format (little-endian throughout):
 *   "GGUF" u32 version, u64 n_tensors, u64 n_kv,
 *   n_kv times:      string key, u32 type, value
 *   n_tensors times: string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset
 *   padding to general.alignment (default 32), then the data; each tensor at data + offset.
 * A string is u64 length + bytes (not NUL-terminated); an array is u32 element type + u64
 * count + the elements. ne[0] is the fastest-varying dimension: a Linear weight of
 * (out_features, in_features) has ne = {in_features, out_features}.
 */
#ifndef SN_GGUF_H
#define SN_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum sn_gguf_type {
    SN_GGUF_UINT8 = 0, SN_GGUF_INT8 = 1, SN_GGUF_UINT16 = 2, SN_GGUF_INT16 = 3,
    SN_GGUF_UINT32 = 4, SN_GGUF_INT32 = 5, SN_GGUF_FLOAT32 = 6, SN_GGUF_BOOL = 7,
    SN_GGUF_STRING = 8, SN_GGUF_ARRAY = 9, SN_GGUF_UINT64 = 10, SN_GGUF_INT64 = 11,
    SN_GGUF_FLOAT64 = 12
};

/* ggml tensor types this engine knows by name (others are reported by number). */
enum sn_ggml_type {
    SN_GGML_F32 = 0, SN_GGML_F16 = 1, SN_GGML_Q4_0 = 2, SN_GGML_Q4_1 = 3, SN_GGML_Q5_0 = 6,
    SN_GGML_Q5_1 = 7, SN_GGML_Q8_0 = 8, SN_GGML_Q8_1 = 9, SN_GGML_Q2_K = 10, SN_GGML_Q3_K = 11,
    SN_GGML_Q4_K = 12, SN_GGML_Q5_K = 13, SN_GGML_Q6_K = 14, SN_GGML_Q8_K = 15, SN_GGML_BF16 = 30
};

/* A string inside the mapping: len bytes at s, not NUL-terminated. */
typedef struct sn_gguf_str {
    const char *s;
    uint64_t len;
} sn_gguf_str;

typedef struct sn_gguf_kv {
    sn_gguf_str key;
    uint32_t type;          /* enum sn_gguf_type */
    uint32_t arr_type;      /* element type when type is SN_GGUF_ARRAY */
    uint64_t arr_n;         /* element count when type is SN_GGUF_ARRAY */
    const uint8_t *value;   /* the value (an array's first element) inside the mapping */
} sn_gguf_kv;

typedef struct sn_gguf_tensor {
    sn_gguf_str name;
    uint32_t n_dims;
    uint64_t ne[4];         /* ne[0] fastest; unused dimensions are 1 */
    uint32_t type;          /* enum sn_ggml_type */
    const void *data;       /* inside the mapping, checked to lie inside the file */
    uint64_t nbytes;
} sn_gguf_tensor;

typedef struct sn_gguf {
    char *path;             /* owned; the file as named in messages */
    const uint8_t *map;
    size_t size;
    uint32_t version;
    uint32_t alignment;
    uint64_t n_kv, n_tensors;
    sn_gguf_kv *kv;         /* (n_kv) in file order */
    sn_gguf_tensor *tensors;/* (n_tensors) in file order */
} sn_gguf;

/*
 * Maps path and checks it: the magic and version, every count against the bytes left (a
 * count that lies cannot make the parser read past the end or allocate without bound), every
 * key and value, every tensor's type (known block size), dimensions and byte range. On
 * failure returns -1 with "PATH: what is wrong" in err, and *out is NULL.
 */
int sn_gguf_open(const char *path, sn_gguf **out, char *err, size_t errlen);
void sn_gguf_close(sn_gguf *g);

/* The entry with this key, or NULL. */
const sn_gguf_kv *sn_gguf_find(const sn_gguf *g, const char *key);
/* The tensor with this name, or NULL. */
const sn_gguf_tensor *sn_gguf_tensor_find(const sn_gguf *g, const char *name);

/* Typed reads of a scalar entry: 0 when the key exists and converts without loss (any
 * integer type to int64 within range; FLOAT32 or FLOAT64 to double; BOOL to int), -1 when
 * it is absent or of another type. */
int sn_gguf_get_int(const sn_gguf *g, const char *key, int64_t *out);
int sn_gguf_get_float(const sn_gguf *g, const char *key, double *out);
int sn_gguf_get_bool(const sn_gguf *g, const char *key, int *out);
int sn_gguf_get_str(const sn_gguf *g, const char *key, sn_gguf_str *out);

/* The strings of an array-of-strings entry, into out (arr_n entries, the caller's). Returns
 * 0, or -1 when kv is not an array of strings. Lengths were checked at open. */
int sn_gguf_array_strings(const sn_gguf_kv *kv, sn_gguf_str *out);
/* Element i of a numeric array as int64 / double (no range checks beyond the type). */
int64_t sn_gguf_array_int(const sn_gguf_kv *kv, uint64_t i);
double sn_gguf_array_float(const sn_gguf_kv *kv, uint64_t i);

/* ggml type facts: elements per block (0 for an unknown type), bytes per block, the name
 * ("Q4_1", or "type 42"). The name buffer is used only for unknown types. */
uint32_t sn_ggml_block_elems(uint32_t type);
uint32_t sn_ggml_block_bytes(uint32_t type);
const char *sn_ggml_type_name(uint32_t type, char *buf, size_t len);

/* Dequantises n elements (a multiple of the block size) of a tensor of type F32, F16, BF16,
 * Q4_0, Q4_1 or Q8_0 starting at a block boundary, bit-identical to the gguf Python
 * package's reference (float32 arithmetic, the scale multiplied then the minimum added).
 * Returns -1 for another type. */
int sn_ggml_dequantize(uint32_t type, const void *src, float *dst, size_t n);

/* IEEE half and bfloat16 to float, exact. */
float sn_half_to_float(uint16_t h);
float sn_bf16_to_float(uint16_t h);

#endif /* SN_GGUF_H */
