/*
 * chat.c - chat templates of GGUF models by family (sensorium.h, "Chat templates"):
 * recognise the family from the template's control tokens, find their ids, render a turn as
 * alternating raw ids and text.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf.h"
#include "internal.h"

enum family { CHATML, LLAMA3 };

/* Control tokens by role, -1 when the family does not use it. */
enum { BEGIN_TEXT, IM_START, IM_END, HEADER_START, HEADER_END, EOT, N_CONTROL };

static const char *const control_text[N_CONTROL] = {
    [BEGIN_TEXT] = "<|begin_of_text|>", [IM_START] = "<|im_start|>",          [IM_END] = "<|im_end|>",
    [HEADER_START] = "<|start_header_id|>", [HEADER_END] = "<|end_header_id|>", [EOT] = "<|eot_id|>",
};

struct sn_chat {
    enum family family;
    int32_t id[N_CONTROL];
    char *default_system; /* the template's own system prompt, or NULL */
};

/* The id of the token whose text is exactly s, or -1. */
static int32_t token_id(const sn_gguf_str *tokens, uint64_t n, const char *s)
{
    size_t len = strlen(s);
    for (uint64_t i = 0; i < n; i++)
        if (tokens[i].len == len && memcmp(tokens[i].s, s, len) == 0)
            return (int32_t)i;
    return -1;
}

/* A ChatML template that adds a system turn of its own when the conversation has none
 * writes it as a literal: '<|im_start|>system\nTEXT<|im_end|>'. That TEXT, or NULL. */
static char *chatml_default_system(const char *tpl, size_t len)
{
    static const char open[] = "<|im_start|>system\n", close[] = "<|im_end|>";
    const char *end = tpl + len;
    for (const char *p = tpl; p + sizeof open - 1 <= end; p++) {
        if (memcmp(p, open, sizeof open - 1) != 0)
            continue;
        const char *text = p + sizeof open - 1;
        /* a literal, not the "+ message['content'] +" of the general case */
        if (text < end && (*text == '\'' || *text == '"' || *text == '+' || *text == ' '))
            continue;
        for (const char *q = text; q + sizeof close - 1 <= end; q++)
            if (memcmp(q, close, sizeof close - 1) == 0) {
                size_t n = (size_t)(q - text);
                char *s = malloc(n + 1);
                if (s) {
                    memcpy(s, text, n);
                    s[n] = '\0';
                }
                return s;
            }
    }
    return NULL;
}

sn_status sn_chat_open(const char *gguf_path, sn_chat **out)
{
    sn_clear_error();
    if (!gguf_path || !out)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_chat_open: NULL argument");
    *out = NULL;
    struct stat sb;
    if (stat(gguf_path, &sb) == 0 && !S_ISREG(sb.st_mode))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: a folder; chat templates are read from GGUF model files", gguf_path);
    char err[768];
    sn_gguf *g;
    if (sn_gguf_open(gguf_path, &g, err, sizeof err) != 0)
        return sn_fail(SN_ERR_FORMAT, "%s", err);
    sn_status st = SN_OK;
    sn_gguf_str tpl;
    const sn_gguf_kv *tk = sn_gguf_find(g, "tokenizer.ggml.tokens");
    sn_gguf_str *tokens = NULL;
    sn_chat *c = calloc(1, sizeof *c);
    if (!c) {
        st = sn_fail(SN_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (sn_gguf_get_str(g, "tokenizer.chat_template", &tpl) != 0) {
        st = sn_fail(SN_ERR_NOT_FOUND, "%s: no tokenizer.chat_template: not a chat model (use --prompt)", gguf_path);
        goto done;
    }
    if (!tk || !(tokens = malloc((tk->arr_n ? tk->arr_n : 1) * sizeof *tokens)) ||
        sn_gguf_array_strings(tk, tokens) != 0) {
        st = sn_fail(SN_ERR_FORMAT, "%s: no tokenizer.ggml.tokens list", gguf_path);
        goto done;
    }
    char *text = malloc(tpl.len + 1);
    if (!text) {
        st = sn_fail(SN_ERR_NOMEM, "out of memory");
        goto done;
    }
    memcpy(text, tpl.s, tpl.len);
    text[tpl.len] = '\0';
    if (strstr(text, "<|start_header_id|>"))
        c->family = LLAMA3;
    else if (strstr(text, "<|im_start|>"))
        c->family = CHATML;
    else {
        st = sn_fail(SN_ERR_UNSUPPORTED, "%s: chat template not recognised (ChatML and Llama-3 are): %.80s...", gguf_path,
                     text);
        free(text);
        goto done;
    }
    static const int needs[2][N_CONTROL] = {
        [CHATML] = {[IM_START] = 1, [IM_END] = 1},
        [LLAMA3] = {[BEGIN_TEXT] = 1, [HEADER_START] = 1, [HEADER_END] = 1, [EOT] = 1},
    };
    for (int k = 0; k < N_CONTROL; k++) {
        c->id[k] = needs[c->family][k] ? token_id(tokens, tk->arr_n, control_text[k]) : -1;
        if (needs[c->family][k] && c->id[k] < 0) {
            st = sn_fail(SN_ERR_FORMAT, "%s: the chat template uses %s, which is not in the vocabulary", gguf_path,
                         control_text[k]);
            free(text);
            goto done;
        }
    }
    if (c->family == CHATML && strstr(text, "!= 'system'"))
        c->default_system = chatml_default_system(text, tpl.len);
    free(text);
done:
    free(tokens);
    sn_gguf_close(g);
    if (st != SN_OK) {
        sn_chat_close(c);
        return st;
    }
    *out = c;
    return SN_OK;
}

void sn_chat_close(sn_chat *c)
{
    if (!c)
        return;
    free(c->default_system);
    free(c);
}

const char *sn_chat_family(const sn_chat *c) { return c->family == LLAMA3 ? "llama3" : "chatml"; }

static sn_status ids(sn_session *s, int32_t a, int32_t b)
{
    int32_t v[2] = {a, b};
    return sn_session_feed_tokens(s, v, b >= 0 ? 2 : 1);
}

static sn_status text(sn_session *s, const char *a, const char *b)
{
    size_t la = strlen(a), lb = b ? strlen(b) : 0;
    char *joined = malloc(la + lb + 1);
    if (!joined)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    memcpy(joined, a, la);
    if (lb)
        memcpy(joined + la, b, lb);
    sn_media m = {.kind = SN_MEDIA_TEXT, .text = {joined, la + lb}};
    sn_status st = la + lb ? sn_session_feed(s, "text", &m) : SN_OK;
    free(joined);
    return st;
}

/* One message: the family's header, the content, the end of the message. */
static sn_status message(const sn_chat *c, sn_session *s, const char *role, const char *content)
{
    sn_status st;
    if (c->family == CHATML) {
        if ((st = ids(s, c->id[IM_START], -1)) || (st = text(s, role, "\n")) ||
            (st = text(s, content, NULL)) || (st = ids(s, c->id[IM_END], -1)))
            return st;
        return text(s, "\n", NULL);
    }
    if ((st = ids(s, c->id[HEADER_START], -1)) || (st = text(s, role, NULL)) ||
        (st = ids(s, c->id[HEADER_END], -1)) || (st = text(s, "\n\n", content)))
        return st;
    return ids(s, c->id[EOT], -1);
}

sn_status sn_chat_feed_turn(const sn_chat *c, sn_session *s, const char *system, const char *user, int first)
{
    sn_clear_error();
    if (!c || !s || !user)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_chat_feed_turn: NULL argument");
    sn_status st;
    if (first && c->family == LLAMA3 && (st = ids(s, c->id[BEGIN_TEXT], -1)))
        return st;
    const char *sys = system ? system : c->default_system;
    if (first && sys && (st = message(c, s, "system", sys)))
        return st;
    if ((st = message(c, s, "user", user)))
        return st;
    if (c->family == CHATML) {
        if ((st = ids(s, c->id[IM_START], -1)))
            return st;
        return text(s, "assistant\n", NULL);
    }
    if ((st = ids(s, c->id[HEADER_START], -1)) || (st = text(s, "assistant", NULL)) ||
        (st = ids(s, c->id[HEADER_END], -1)))
        return st;
    return text(s, "\n\n", NULL);
}
