// Link stubs for the few symbols ggml.c references from the parts of ggml that
// ggml-oracle does not build (the backend scheduler and ggml-threading.cpp).
// None of them is reached by quantization: the backend ones abort if called.

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-threading.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static pthread_mutex_t critical_section = PTHREAD_MUTEX_INITIALIZER;

void ggml_critical_section_start(void) { pthread_mutex_lock(&critical_section); }
void ggml_critical_section_end(void) { pthread_mutex_unlock(&critical_section); }

static void unreachable_stub(const char * name) {
    fprintf(stderr, "ggml-oracle: %s is not linked in (backend code is not part of the oracle)\n", name);
    abort();
}

enum ggml_backend_buffer_usage ggml_backend_buffer_get_usage(ggml_backend_buffer_t buffer) {
    (void) buffer;
    unreachable_stub("ggml_backend_buffer_get_usage");
    return GGML_BACKEND_BUFFER_USAGE_ANY;
}

void ggml_backend_tensor_set(struct ggml_tensor * tensor, const void * data, size_t offset, size_t size) {
    (void) tensor; (void) data; (void) offset; (void) size;
    unreachable_stub("ggml_backend_tensor_set");
}

void ggml_backend_tensor_memset(struct ggml_tensor * tensor, uint8_t value, size_t offset, size_t size) {
    (void) tensor; (void) value; (void) offset; (void) size;
    unreachable_stub("ggml_backend_tensor_memset");
}
