// ggml-oracle: a thin command-line front end to ggml's own quantization code,
// used by dynapress-ggml's tests as the bit-exactness reference.
//
// It links ggml.c and ggml-quants.c from the llama.cpp tree vendored in the
// llama-cpp-python 0.3.36 sdist (see build.sh) and calls the same entry points
// llama-quantize uses: ggml_quantize_chunk() to encode (with or without an
// importance vector) and the type traits' to_float() to decode.
//
// Files are raw little-endian arrays: f32 for weights, importance vectors and
// decoded values; ggml block bytes for encoded data.
//
// Commands (exit status 0 on success, 2 on bad usage or I/O errors):
//   ggml-oracle types
//       one line per ggml type: id name block_size type_size
//   ggml-oracle quantize TYPE N_PER_ROW IN.f32 OUT.bin [IMATRIX.f32]
//       encodes every row of IN with ggml_quantize_chunk(); IMATRIX holds
//       N_PER_ROW f32 (one per column). Prints "valid 1" or "valid 0": the
//       verdict of ggml_validate_row_data() on the output, which is the check
//       llama-quantize applies before it writes a tensor. For a type that
//       ggml encodes only with an importance vector (IQ2_XXS, IQ2_XS, IQ1_S:
//       ggml_quantize_requires_imatrix) and no IMATRIX, it prints
//       "requires_imatrix" and writes nothing, where ggml_quantize_chunk would
//       abort. The i-quants' codebook tables are set up with
//       ggml_quantize_init(), as llama-quantize does.
//   ggml-oracle dequantize TYPE IN.bin OUT.f32
//       decodes whole blocks with ggml's to_float (dequantize_row_*).
//   ggml-oracle convhash f16|bf16 STRIDE
//       FNV-1a (64-bit) over the 16-bit encodings of every f32 bit pattern
//       0, STRIDE, 2*STRIDE, ... < 2^32, as ggml converts them
//       (GGML_FP32_TO_FP16 / ggml_fp32_to_bf16_row_ref). Prints the hash in hex.
//
// TYPE is a ggml type name (q4_K, Q8_0, f16, ...; case-insensitive).

#include "ggml.h"
#include "ggml-cpu.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void die(const char * msg, const char * arg) {
    fprintf(stderr, "ggml-oracle: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    exit(2);
}

static int parse_type(const char * name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const struct ggml_type_traits * tr = ggml_get_type_traits((enum ggml_type) t);
        if (tr->type_name && tr->blck_size > 0 && strcasecmp(tr->type_name, name) == 0) {
            return t;
        }
    }
    die("unknown ggml type", name);
    return -1;
}

static void * read_file(const char * path, size_t * len) {
    FILE * f = fopen(path, "rb");
    if (!f) die("cannot open", path);
    if (fseek(f, 0, SEEK_END) != 0) die("cannot seek", path);
    long n = ftell(f);
    if (n < 0) die("cannot tell", path);
    rewind(f);
    void * buf = malloc(n > 0 ? (size_t) n : 1);
    if (!buf) die("out of memory reading", path);
    if (n > 0 && fread(buf, 1, (size_t) n, f) != (size_t) n) die("short read", path);
    fclose(f);
    *len = (size_t) n;
    return buf;
}

static void write_file(const char * path, const void * buf, size_t len) {
    FILE * f = fopen(path, "wb");
    if (!f) die("cannot create", path);
    if (len > 0 && fwrite(buf, 1, len, f) != len) die("short write", path);
    if (fclose(f) != 0) die("cannot close", path);
}

static int cmd_types(void) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const struct ggml_type_traits * tr = ggml_get_type_traits((enum ggml_type) t);
        if (tr->type_name && tr->blck_size > 0) {
            printf("%d %s %lld %zu\n", t, tr->type_name, (long long) tr->blck_size, tr->type_size);
        }
    }
    return 0;
}

static int cmd_quantize(int argc, char ** argv) {
    if (argc != 4 && argc != 5) die("usage: quantize TYPE N_PER_ROW IN.f32 OUT.bin [IMATRIX.f32]", NULL);
    const enum ggml_type type = (enum ggml_type) parse_type(argv[0]);
    const long long n_per_row = atoll(argv[1]);
    if (n_per_row <= 0) die("bad N_PER_ROW", argv[1]);
    if (n_per_row % ggml_blck_size(type) != 0) die("N_PER_ROW is not a multiple of the block size", argv[1]);

    size_t in_len = 0;
    float * src = read_file(argv[2], &in_len);
    if (in_len % (sizeof(float) * (size_t) n_per_row) != 0) die("input is not a whole number of rows", argv[2]);
    const int64_t nrows = (int64_t) (in_len / sizeof(float) / (size_t) n_per_row);

    float * imatrix = NULL;
    if (argc == 5) {
        size_t im_len = 0;
        imatrix = read_file(argv[4], &im_len);
        if (im_len != sizeof(float) * (size_t) n_per_row) die("importance vector must hold N_PER_ROW f32", argv[4]);
    }

    if (!imatrix && ggml_quantize_requires_imatrix(type)) {
        printf("requires_imatrix\n");
        free(src);
        return 0;
    }
    ggml_quantize_init(type);

    const size_t out_len = ggml_row_size(type, n_per_row) * (size_t) nrows;
    void * dst = calloc(out_len > 0 ? out_len : 1, 1);
    if (!dst) die("out of memory", NULL);
    size_t written = 0;
    if (nrows > 0) {
        written = ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix);
    }
    if (written != out_len) die("ggml_quantize_chunk wrote an unexpected size", NULL);
    const bool valid = out_len == 0 || ggml_validate_row_data(type, dst, out_len);
    write_file(argv[3], dst, out_len);
    printf("valid %d\n", valid ? 1 : 0);
    free(src);
    free(imatrix);
    free(dst);
    return 0;
}

static int cmd_dequantize(int argc, char ** argv) {
    if (argc != 3) die("usage: dequantize TYPE IN.bin OUT.f32", NULL);
    const enum ggml_type type = (enum ggml_type) parse_type(argv[0]);
    const struct ggml_type_traits * tr = ggml_get_type_traits(type);
    size_t in_len = 0;
    void * src = read_file(argv[1], &in_len);
    if (in_len % tr->type_size != 0) die("input is not a whole number of blocks", argv[1]);
    const int64_t n = (int64_t) (in_len / tr->type_size) * tr->blck_size;
    float * dst = malloc(n > 0 ? (size_t) n * sizeof(float) : 1);
    if (!dst) die("out of memory", NULL);
    if (type == GGML_TYPE_F32) {
        memcpy(dst, src, in_len);
    } else {
        if (!tr->to_float) die("type has no to_float", argv[0]);
        if (n > 0) tr->to_float(src, dst, n);
    }
    write_file(argv[2], dst, (size_t) n * sizeof(float));
    free(src);
    free(dst);
    return 0;
}

static int cmd_convhash(int argc, char ** argv) {
    if (argc != 2) die("usage: convhash f16|bf16 STRIDE", NULL);
    const int bf = strcasecmp(argv[0], "bf16") == 0;
    if (!bf && strcasecmp(argv[0], "f16") != 0) die("convhash takes f16 or bf16", argv[0]);
    const long long stride = atoll(argv[1]);
    if (stride <= 0) die("bad STRIDE", argv[1]);
    uint64_t h = 0xcbf29ce484222325ULL;
    for (uint64_t u = 0; u < (1ULL << 32); u += (uint64_t) stride) {
        const uint32_t bits = (uint32_t) u;
        float f;
        memcpy(&f, &bits, sizeof f);
        uint16_t v;
        if (bf) {
            ggml_bf16_t b;
            ggml_fp32_to_bf16_row_ref(&f, &b, 1);
            v = b.bits;
        } else {
            ggml_fp16_t x;
            ggml_fp32_to_fp16_row(&f, &x, 1);
            v = x;
        }
        h = (h ^ (uint64_t) (v & 0xff)) * 0x100000001b3ULL;
        h = (h ^ (uint64_t) (v >> 8)) * 0x100000001b3ULL;
    }
    printf("%016llx\n", (unsigned long long) h);
    return 0;
}

int main(int argc, char ** argv) {
    if (argc < 2) die("usage: ggml-oracle types|quantize|dequantize|convhash ...", NULL);
    if (strcmp(argv[1], "types") == 0) return cmd_types();
    if (strcmp(argv[1], "quantize") == 0) return cmd_quantize(argc - 2, argv + 2);
    if (strcmp(argv[1], "dequantize") == 0) return cmd_dequantize(argc - 2, argv + 2);
    if (strcmp(argv[1], "convhash") == 0) return cmd_convhash(argc - 2, argv + 2);
    die("unknown command", argv[1]);
    return 2;
}
