/*
 * probe_main.c - `cuda_probe`: prints the GPUs the CUDA library sees, or why it sees none.
 * Exit 0 with a GPU, 77 without one (ctest shows the test as skipped, with the reason in its
 * output), 1 when the CUDA runtime itself fails.
 */
#include <stddef.h>
#include <stdio.h>

int sn_cuda_probe(char *msg, size_t msg_len);

int main(void)
{
    char msg[1024];
    int n = sn_cuda_probe(msg, sizeof msg);
    if (n < 0) {
        fprintf(stderr, "cuda_probe: %s\n", msg);
        return 1;
    }
    if (n == 0) {
        printf("cuda_probe: SKIP: %s\n", msg);
        return 77;
    }
    printf("cuda_probe: %d device(s): %s\n", n, msg);
    return 0;
}
