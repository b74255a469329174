/*
 * model.h - a Llama-family model on disk: its hyper-parameters and its weights, memory-mapped
 * from safetensors files, each tensor checked against the shape the configuration implies.
 *
 * Stage of the pipeline: loading, before any backend. A backend receives an sn_model and
 * reads (or uploads) the tensors it needs; nothing here computes.
 *
 * Three layouts load:
 *   - a GGUF file (version 2 or 3, general.architecture "llama"): hyper-parameters from its
 *     metadata, llama.cpp tensor names (token_embd, blk.N.attn_q, ..., output_norm, output),
 *     F32/F16/BF16 and the Q8_0, Q4_0 and Q4_1 block quantisations, which the CPU backend
 *     computes on directly. llama.cpp stores Q and K rows permuted for the interleaved RoPE
 *     layout, so such a model sets rope_interleaved;
 *   - a Sensorium model folder: sensorium.json with an "architecture" object (the Hugging Face
 *     config.json keys below) and "weights" (a .safetensors file, or an index .json, relative
 *     to the folder);
 *   - a Hugging Face folder: config.json + model.safetensors, or + model.safetensors.index.json
 *     naming the shards.
 * Tensor names are Hugging Face Llama's: model.embed_tokens.weight,
 * model.layers.N.{input_layernorm,post_attention_layernorm}.weight,
 * model.layers.N.self_attn.{q,k,v,o}_proj.weight, model.layers.N.mlp.{gate,up,down}_proj.weight,
 * model.norm.weight, lm_head.weight (absent when tie_word_embeddings).
 */
#ifndef SN_MODEL_H
#define SN_MODEL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"

/* Element types, and the ggml block quantisations of GGUF files: a block of 32 weights is a
 * half-precision scale d (and for Q4_1 a minimum m) then 32 8-bit or 4-bit integers q, and
 * the weight is d*q (Q8_0), d*(q-8) (Q4_0) or d*q+m (Q4_1). */
typedef enum sn_dtype {
    SN_DTYPE_F32 = 0, SN_DTYPE_F16 = 1, SN_DTYPE_BF16 = 2,
    SN_DTYPE_Q8_0 = 3, SN_DTYPE_Q4_0 = 4, SN_DTYPE_Q4_1 = 5
} sn_dtype;

/* A tensor inside a mapped file. data points into the mapping; shape is row-major, with
 * shape[0] the slowest dimension (a Linear weight is (out_features, in_features)). */
typedef struct sn_tensor {
    const char *name;
    sn_dtype dtype;
    int ndim;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
    const char *file; /* the file it lives in, for messages */
} sn_tensor;

/* The hyper-parameters, with Hugging Face config.json names in comments. */
typedef struct sn_model_config {
    int32_t vocab_size;        /* vocab_size */
    int32_t hidden;            /* hidden_size */
    int32_t intermediate;      /* intermediate_size */
    int32_t n_layers;          /* num_hidden_layers */
    int32_t n_heads;           /* num_attention_heads */
    int32_t n_kv_heads;        /* num_key_value_heads (default n_heads) */
    int32_t head_dim;          /* head_dim (default hidden / n_heads) */
    int32_t max_positions;     /* max_position_embeddings */
    float rms_eps;             /* rms_norm_eps */
    float rope_theta;          /* rope_theta (default 10000) */
    int tie_embeddings;        /* tie_word_embeddings (default false) */
    /* rope_scaling {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
     * "original_max_position_embeddings"}; other rope types are an error */
    int rope_llama3;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int32_t rope_original_max_positions;
    /* Rotation pairs: 0 is Hugging Face's rotate_half (element i with i + head_dim/2), 1 is
     * the interleaved layout (2i with 2i+1) that GGUF llama checkpoints are permuted for. */
    int rope_interleaved;
} sn_model_config;

/* Reads the configuration from a parsed config.json object (or sensorium.json's
 * "architecture"); source names the file in messages. Checks every value's type and range
 * (positive sizes, n_heads divisible by n_kv_heads, ...). */
sn_status sn_model_config_parse(json_t *obj, const char *source, sn_model_config *out);

/* One layer's weights. */
typedef struct sn_layer_weights {
    const sn_tensor *attn_norm; /* (hidden) */
    const sn_tensor *wq;        /* (n_heads*head_dim, hidden) */
    const sn_tensor *wk;        /* (n_kv_heads*head_dim, hidden) */
    const sn_tensor *wv;        /* (n_kv_heads*head_dim, hidden) */
    const sn_tensor *wo;        /* (hidden, n_heads*head_dim) */
    const sn_tensor *ffn_norm;  /* (hidden) */
    const sn_tensor *w_gate;    /* (intermediate, hidden) */
    const sn_tensor *w_up;      /* (intermediate, hidden) */
    const sn_tensor *w_down;    /* (hidden, intermediate) */
} sn_layer_weights;

typedef struct sn_model sn_model;

/*
 * Opens the model in dir (either layout above), maps its safetensors files and binds every
 * tensor. Errors name the file and the tensor: a truncated file, a malformed header (JSON
 * line/column), a tensor whose bytes lie outside the file, a dtype other than F32/F16/BF16,
 * a shape that does not match the configuration (expected vs found), a missing tensor, an
 * unexpected extra tensor is only a log line (some checkpoints carry rotary caches).
 */
sn_status sn_model_open(const char *dir, sn_model **out);
void sn_model_close(sn_model *m);

const sn_model_config *sn_model_config_of(const sn_model *m);
const sn_tensor *sn_model_embed(const sn_model *m);   /* (vocab, hidden) */
const sn_tensor *sn_model_norm(const sn_model *m);    /* (hidden) */
const sn_tensor *sn_model_lm_head(const sn_model *m); /* (vocab, hidden); the embedding when tied */
const sn_layer_weights *sn_model_layer(const sn_model *m, int32_t layer);
/* Llama-3 RoPE frequency divisors a GGUF carries as rope_freqs.weight (head_dim/2 floats),
 * or NULL. */
const float *sn_model_rope_factors(const sn_model *m);
/* The GGUF file the model came from, or NULL for safetensors models. */
const char *sn_model_gguf_path(const sn_model *m);

/* Reads a JSON file (duplicate keys refused); errors name the file (and line:column). */
sn_status sn_json_load(const char *path, json_t **out);

/* Converts n elements of a tensor's dtype to float32 (the CPU backend's compute type); for a
 * block type n is a multiple of the block and src starts at a block. Bit-identical to the
 * gguf Python package's dequantisation. */
void sn_convert_to_f32(sn_dtype dtype, const void *src, float *dst, size_t n);

/* The size in bytes of one element, or of one block for a block type; elements per block
 * (1 for F32/F16/BF16, 32 for the Q types). A row of n elements is n / elems * size bytes. */
size_t sn_dtype_size(sn_dtype dtype);
int32_t sn_dtype_block_elems(sn_dtype dtype);
const char *sn_dtype_name(sn_dtype dtype);

#endif /* SN_MODEL_H */
