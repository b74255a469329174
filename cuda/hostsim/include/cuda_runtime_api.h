/* cuda_runtime_api.h (host simulator): see cuda_runtime.h. */
#include "cuda_runtime.h"
