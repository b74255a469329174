/*
 * plugin_util.h - small helpers the reference plugins share: checking a host table's size,
 * rejecting configuration keys a plugin does not know, naming media kinds, and quoting
 * arbitrary bytes into one-line error messages. Header-only (static inline); part of the
 * plugins' own helper folder, plugins/common. A plugin written outside this repository needs
 * none of it: plugin.h alone is the ABI.
 */
#ifndef SN_PU_PLUGIN_UTIL_H
#define SN_PU_PLUGIN_UTIL_H

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <sensorium/plugin.h>

/* A host-table field may be read only when the host's table is large enough to hold it. */
#define SN_PU_HOST_HAS(host, field) \
    ((host)->struct_size >= offsetof(sn_host, field) + sizeof((host)->field))

static inline const char *sn_pu_media_kind_name(sn_media_kind kind)
{
    switch (kind) {
    case SN_MEDIA_TEXT: return "text";
    case SN_MEDIA_AUDIO: return "audio";
    case SN_MEDIA_IMAGE: return "image";
    case SN_MEDIA_SERIES: return "series";
    }
    return "unknown";
}

/* The length of the well-formed UTF-8 character at s (n bytes available), or 0 when the
 * bytes there are not one (Unicode table 3-7: no overlongs, surrogates or > U+10FFFF). */
static inline size_t sn_pu_utf8_char_len(const unsigned char *s, size_t n)
{
    if (n == 0)
        return 0;
    unsigned char b = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b < 0x80)
        return 1;
    if (b >= 0xC2 && b <= 0xDF)
        len = 2;
    else if (b >= 0xE0 && b <= 0xEF) {
        len = 3;
        if (b == 0xE0)
            lo = 0xA0;
        else if (b == 0xED)
            hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4;
        if (b == 0xF0)
            lo = 0x90;
        else if (b == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

/* Copies the n bytes at src into dst (cap >= 8) for an error message: control characters and
 * ill-formed bytes become \xHH so that the message stays one valid line, and what does not
 * fit ends in "...". */
static inline void sn_pu_quote(char *dst, size_t cap, const char *src, size_t n)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = sn_pu_utf8_char_len(s + i, n - i);
        char piece[8];
        size_t plen;
        if (k == 0 || (k == 1 && (s[i] < 0x20 || s[i] == 0x7F))) {
            snprintf(piece, sizeof piece, "\\x%02X", s[i]);
            plen = 4;
            k = 1;
        } else {
            memcpy(piece, s + i, k);
            plen = k;
        }
        if (o + plen + 4 > cap) {
            memcpy(dst + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(dst + o, piece, plen);
        o += plen;
        i += k;
    }
    dst[o] = '\0';
}

/* Fails create with SN_PLUGIN_ERR_CONFIG when the configuration holds a key outside keys[0..n):
 * a misspelt key must be an error, not a silent default. */
static inline sn_plugin_status sn_pu_reject_unknown_keys(const sn_host *host, const char *plugin,
                                                         const char *const *keys, size_t n,
                                                         sn_plugin_error *err)
{
    if (!SN_PU_HOST_HAS(host, config_key))
        return SN_PLUGIN_OK;
    const char *key;
    for (size_t i = 0; (key = host->config_key(host, i)) != NULL; i++) {
        size_t k = 0;
        while (k < n && strcmp(keys[k], key) != 0)
            k++;
        if (k < n)
            continue;
        char quoted[96], known[256] = "";
        sn_pu_quote(quoted, sizeof quoted, key, strlen(key));
        for (size_t j = 0; j < n; j++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", j ? ", " : "", keys[j]);
        sn_plugin_error_set(err, "unknown config key '%s' for %s (known: %s)", quoted, plugin,
                            n ? known : "none");
        return SN_PLUGIN_ERR_CONFIG;
    }
    return SN_PLUGIN_OK;
}

#endif /* SN_PU_PLUGIN_UTIL_H */
