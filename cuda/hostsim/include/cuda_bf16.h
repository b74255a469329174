/* cuda_bf16.h (host simulator): bf16 values are uint16_t bits (sn_bf16) on the host side. */
#include "cuda_runtime.h"
