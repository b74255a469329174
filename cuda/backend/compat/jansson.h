/*
 * compat/jansson.h - the one name core/src/model.h needs from Jansson (json_t, in a prototype
 * the CUDA backend never calls), so that the backend compiles on a GPU machine without
 * Jansson (scripts/gpu-check.sh builds cuda/ on its own). Only the backend's targets put this
 * folder on their include path; the engine core includes the real header.
 */
#ifndef SN_CUDA_COMPAT_JANSSON_H
#define SN_CUDA_COMPAT_JANSSON_H
typedef struct json_t json_t;
#endif
