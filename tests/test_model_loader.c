/*
 * test_model_loader.c - models on disk: both layouts, sharded checkpoints, every dtype, and
 * every way a download can be broken, each a clear error naming the file and the tensor.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"

static char dir[64];

static void setup(void)
{
    strcpy(dir, "/tmp/sn_model_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

TestSuite(model, .init = setup, .fini = teardown, .timeout = 120);

static const char *make_model(const char *args)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/m", dir);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf %s && python3 %s/tests/reference/make_model.py %s %s", path,
             SN_SOURCE_DIR, path, args);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    return path;
}

/* Runs a python snippet with P bound to the model folder (to corrupt a file). */
static void edit(const char *model, const char *code)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "python3 -c \"import json, os; P='%s'\n%s\"", model, code);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
}

static void expect_error(const char *model, sn_status want, const char *needle1, const char *needle2)
{
    sn_model *m = (sn_model *)1;
    sn_status st = sn_model_open(model, &m);
    const char *msg = sn_errmsg();
    cr_assert_eq(st, want, "status %s, message: %s", sn_status_str(st), msg);
    cr_expect_null(m);
    cr_expect_not_null(strstr(msg, needle1), "message lacks '%s': %s", needle1, msg);
    if (needle2)
        cr_expect_not_null(strstr(msg, needle2), "message lacks '%s': %s", needle2, msg);
    cr_expect_null(strchr(msg, '\n'));
}

Test(model, both_layouts_all_dtypes_and_shards_load)
{
    const char *cases[] = {"--dtype f32", "--dtype f16", "--dtype bf16 --tie", "--shards 4",
                           "--layout sensorium --kv-heads 1", "--llama3-rope"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *model = make_model(cases[i]);
        sn_model *m;
        cr_assert_eq(sn_model_open(model, &m), SN_OK, "%s: %s", cases[i], sn_errmsg());
        const sn_model_config *c = sn_model_config_of(m);
        cr_expect_eq(c->vocab_size, 300);
        cr_expect_eq(c->hidden, 64);
        cr_expect_eq(c->n_layers, 2);
        cr_expect_eq(c->head_dim, 16);
        cr_expect_eq(c->tie_embeddings, strstr(cases[i], "--tie") != NULL);
        cr_expect_eq(c->rope_llama3, strstr(cases[i], "llama3") != NULL);
        if (c->tie_embeddings)
            cr_expect_eq(sn_model_lm_head(m), sn_model_embed(m));
        const sn_tensor *wk = sn_model_layer(m, 1)->wk;
        cr_expect_eq(wk->shape[0], (int64_t)c->n_kv_heads * c->head_dim);
        cr_expect_eq(wk->shape[1], 64);
        sn_model_close(m);
    }
}

Test(model, half_precision_converts_exactly)
{
    /* f16: 1.0, -2.5, the smallest subnormal, 65504, inf; bf16: 1.0, -2.5, 3.140625 */
    const uint16_t h[] = {0x3C00, 0xC100, 0x0001, 0x7BFF, 0x7C00};
    const float hf[] = {1.0f, -2.5f, 5.9604644775390625e-08f, 65504.0f, __builtin_inff()};
    const uint16_t b[] = {0x3F80, 0xC020, 0x4049};
    const float bf[] = {1.0f, -2.5f, 3.140625f};
    float out[5];
    sn_convert_to_f32(SN_DTYPE_F16, h, out, 5);
    for (int i = 0; i < 5; i++)
        cr_expect_eq(out[i], hf[i], "f16 %d: %g", i, out[i]);
    sn_convert_to_f32(SN_DTYPE_BF16, b, out, 3);
    for (int i = 0; i < 3; i++)
        cr_expect_eq(out[i], bf[i], "bf16 %d: %g", i, out[i]);
}

Test(model, truncated_file)
{
    const char *model = make_model("");
    edit(model, "f=os.path.join(P,'model.safetensors'); n=os.path.getsize(f); os.truncate(f, n - 1000)");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: tensor '", "past the file's");
}

Test(model, header_length_past_the_end)
{
    const char *model = make_model("");
    edit(model, "f=os.path.join(P,'model.safetensors'); os.truncate(f, 100)");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: truncated file", NULL);
}

Test(model, malformed_header_json)
{
    const char *model = make_model("");
    edit(model, "f=open(os.path.join(P,'model.safetensors'),'r+b'); f.seek(9); f.write(b'@'); f.close()");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: malformed header JSON at line 1 column", NULL);
}

/* Rewrites the safetensors header through a python function of the header dict h. */
static void edit_header(const char *model, const char *change)
{
    char code[2048];
    snprintf(code, sizeof code,
             "f=os.path.join(P,'model.safetensors'); b=open(f,'rb').read(); n=int.from_bytes(b[:8],'little')\n"
             "h=json.loads(b[8:8+n]); data=b[8+n:]\n%s\n"
             "t=json.dumps(h).encode(); t+=b' '*((8-len(t)%%8)%%8)\n"
             "open(f,'wb').write(len(t).to_bytes(8,'little')+t+data)",
             change);
    edit(model, code);
}

Test(model, tensor_bytes_outside_the_file)
{
    const char *model = make_model("");
    edit_header(model, "e=h['model.norm.weight']; e['data_offsets']=[len(data)-128, len(data)+128]");
    expect_error(model, SN_ERR_FORMAT, "tensor 'model.norm.weight' ends at byte", "(truncated download?)");
}

Test(model, unsupported_dtype)
{
    const char *model = make_model("");
    edit_header(model, "h['model.norm.weight']['dtype']='I8'; e=h['model.norm.weight']; e['data_offsets'][1]=e['data_offsets'][0]+64");
    expect_error(model, SN_ERR_UNSUPPORTED, "tensor 'model.norm.weight' has dtype I8", "F32, F16 and BF16");
}

Test(model, missing_tensor)
{
    const char *model = make_model("");
    edit_header(model, "del h['model.layers.1.self_attn.k_proj.weight']");
    expect_error(model, SN_ERR_FORMAT, "missing tensor 'model.layers.1.self_attn.k_proj.weight'", NULL);
}

Test(model, shape_that_does_not_match_the_config)
{
    const char *model = make_model("");
    edit(model, "c=json.load(open(os.path.join(P,'config.json'))); c['intermediate_size']=128; json.dump(c, open(os.path.join(P,'config.json'),'w'))");
    expect_error(model, SN_ERR_FORMAT, "tensor 'model.layers.0.mlp.gate_proj.weight' has shape (96, 64)",
                 "the configuration implies (128, 64)");
}

Test(model, missing_or_bad_config)
{
    const char *model = make_model("");
    edit(model, "os.remove(os.path.join(P,'config.json'))");
    expect_error(model, SN_ERR_NOT_FOUND, "no sensorium.json or config.json", NULL);
    model = make_model("");
    edit(model, "open(os.path.join(P,'config.json'),'w').write('{\\\"vocab_size\\\": 300,')");
    expect_error(model, SN_ERR_FORMAT, "config.json:1:", "malformed JSON");
    model = make_model("");
    edit(model, "c=json.load(open(os.path.join(P,'config.json'))); c['num_key_value_heads']=3; json.dump(c, open(os.path.join(P,'config.json'),'w'))");
    expect_error(model, SN_ERR_CONFIG, "num_attention_heads 4 is not a multiple of num_key_value_heads 3", NULL);
}

Test(model, missing_shard)
{
    const char *model = make_model("--shards 3");
    edit(model, "os.remove(os.path.join(P,'model-00002-of-00003.safetensors'))");
    expect_error(model, SN_ERR_IO, "model-00002-of-00003.safetensors: cannot open", NULL);
}

Test(model, manifest_without_architecture)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cp %s/models/demo/sensorium.json %s/", SN_SOURCE_DIR, dir);
    cr_assert_eq(system(cmd), 0);
    expect_error(dir, SN_ERR_CONFIG, "no architecture: this manifest describes only a vocabulary layout", NULL);
}
