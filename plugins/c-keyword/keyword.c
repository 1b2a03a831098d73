// Keyword and link filter (on-message), C version of plugins/rust-keyword: rejects `keyword`
// for a configured word in `text`, `link` for a link to a non-allowed domain.
// Bindings: gen/policy.h from `wit-bindgen c` (see build.sh); JSON: the small reader below.

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

// A growable byte buffer; also used for decoded JSON strings.
typedef struct {
  uint8_t *ptr;
  size_t len, cap;
} buf_t;

typedef struct {
  buf_t *items;
  size_t len;
} list_t;

// Set by init: lower-cased words and domains, and whether the sender is told.
static list_t words, allowed_domains;
static bool notify_sender = true;

// Characters that end the authority part of a link.
static const char HOST_END[] = " \t\r\n/?#\\";
// Besides ASCII letters and digits, the characters after which `www.` is not a link start.
static const char WWW_AFTER[] = "./@:-_";

static bool push(buf_t *b, const void *bytes, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 32;
    while (cap < b->len + n) cap *= 2;
    uint8_t *p = realloc(b->ptr, cap);
    if (!p) return false;
    b->ptr = p;
    b->cap = cap;
  }
  memcpy(b->ptr + b->len, bytes, n);
  b->len += n;
  return true;
}

static bool push_str(buf_t *b, const char *s) { return push(b, s, strlen(s)); }

static bool is_alnum(uint8_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

static bool is_one_of(uint8_t c, const char *set) { return c != 0 && strchr(set, c) != NULL; }

static void ascii_lower(buf_t *b) {
  for (size_t i = 0; i < b->len; i++)
    if (b->ptr[i] >= 'A' && b->ptr[i] <= 'Z') b->ptr[i] += 'a' - 'A';
}

static void list_free(list_t *l) {
  for (size_t i = 0; i < l->len; i++) free(l->items[i].ptr);
  free(l->items);
  l->items = NULL;
  l->len = 0;
}

// ---- A JSON reader for well-formed input (the host always passes valid JSON) ----

typedef struct {
  const uint8_t *p, *end;
} json_t;

static void ws(json_t *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static bool eat(json_t *j, char c) {
  ws(j);
  if (j->p < j->end && *j->p == (uint8_t)c) {
    j->p++;
    return true;
  }
  return false;
}

static int hex4(json_t *j) {
  if (j->end - j->p < 4) return -1;
  int v = 0;
  for (int i = 0; i < 4; i++) {
    uint8_t c = *j->p++;
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else return -1;
  }
  return v;
}

static bool push_utf8(buf_t *b, uint32_t cp) {
  uint8_t u[4];
  size_t n;
  if (cp < 0x80) u[0] = cp, n = 1;
  else if (cp < 0x800) u[0] = 0xC0 | (cp >> 6), u[1] = 0x80 | (cp & 0x3F), n = 2;
  else if (cp < 0x10000) u[0] = 0xE0 | (cp >> 12), u[1] = 0x80 | ((cp >> 6) & 0x3F), u[2] = 0x80 | (cp & 0x3F), n = 3;
  else
    u[0] = 0xF0 | (cp >> 18), u[1] = 0x80 | ((cp >> 12) & 0x3F), u[2] = 0x80 | ((cp >> 6) & 0x3F),
    u[3] = 0x80 | (cp & 0x3F), n = 4;
  return push(b, u, n);
}

// Reads a string (after optional whitespace) into `out`, decoding escapes; `out` may be NULL to skip.
static bool string(json_t *j, buf_t *out) {
  if (!eat(j, '"')) return false;
  while (j->p < j->end) {
    uint8_t c = *j->p++;
    if (c == '"') return true;
    if (c != '\\') {
      if (out && !push(out, &c, 1)) return false;
      continue;
    }
    if (j->p >= j->end) return false;
    uint8_t e = *j->p++;
    uint32_t cp;
    switch (e) {
      case 'b': cp = '\b'; break;
      case 'f': cp = '\f'; break;
      case 'n': cp = '\n'; break;
      case 'r': cp = '\r'; break;
      case 't': cp = '\t'; break;
      case 'u': {
        int hi = hex4(j);
        if (hi < 0) return false;
        cp = hi;
        if (hi >= 0xD800 && hi < 0xDC00 && j->end - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u') {
          j->p += 2;
          int lo = hex4(j);
          if (lo < 0xDC00 || lo >= 0xE000) return false;
          cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
        } else if (hi >= 0xD800 && hi < 0xE000) {
          cp = 0xFFFD;
        }
        break;
      }
      default: cp = e; break;
    }
    if (out && !push_utf8(out, cp)) return false;
  }
  return false;
}

// Skips one value of any kind, without recursion (nesting depth is not limited here).
static bool skip_value(json_t *j) {
  ws(j);
  if (j->p >= j->end) return false;
  if (*j->p == '"') return string(j, NULL);
  if (*j->p != '{' && *j->p != '[') {
    while (j->p < j->end && strchr(",}] \t\r\n", *j->p) == NULL) j->p++;
    return true;
  }
  size_t depth = 0;
  while (j->p < j->end) {
    uint8_t c = *j->p;
    if (c == '"') {
      if (!string(j, NULL)) return false;
      continue;
    }
    j->p++;
    if (c == '{' || c == '[') depth++;
    else if ((c == '}' || c == ']') && --depth == 0) return true;
  }
  return false;
}

// ---- config ----

// Parses a list of non-empty strings, lower-cased; false (with nothing allocated) if it is not one.
static bool strings(json_t *j, list_t *out) {
  list_t l = {0};
  if (!eat(j, '[')) return false;
  if (eat(j, ']')) {
    *out = l;
    return true;
  }
  do {
    buf_t s = {0};
    buf_t *items = realloc(l.items, (l.len + 1) * sizeof(buf_t));
    if (!items || !string(j, &s) || s.len == 0) {
      free(s.ptr);
      if (items) l.items = items;
      list_free(&l);
      return false;
    }
    ascii_lower(&s);
    l.items = items;
    l.items[l.len++] = s;
  } while (eat(j, ','));
  if (!eat(j, ']')) {
    list_free(&l);
    return false;
  }
  *out = l;
  return true;
}

// Parses the config into the globals; on failure returns false with the message in `err`.
static bool parse_config(const uint8_t *text, size_t len, buf_t *err) {
  json_t j = {text, text + len};
  buf_t key = {0};
  const char *problem = NULL;
  if (!eat(&j, '{')) {
    problem = "must be a JSON object";
  } else if (!eat(&j, '}')) {
    do {
      key.len = 0;
      if (!string(&j, &key) || !eat(&j, ':')) {
        problem = "invalid JSON";
      } else if (key.len == 5 && memcmp(key.ptr, "words", 5) == 0) {
        list_free(&words);
        if (!strings(&j, &words)) problem = "`words` must be a list of non-empty strings";
      } else if (key.len == 15 && memcmp(key.ptr, "allowed_domains", 15) == 0) {
        list_free(&allowed_domains);
        if (!strings(&j, &allowed_domains)) problem = "`allowed_domains` must be a list of non-empty strings";
      } else if (key.len == 13 && memcmp(key.ptr, "notify_sender", 13) == 0) {
        ws(&j);
        if (j.end - j.p >= 4 && memcmp(j.p, "true", 4) == 0) notify_sender = true, j.p += 4;
        else if (j.end - j.p >= 5 && memcmp(j.p, "false", 5) == 0) notify_sender = false, j.p += 5;
        else problem = "`notify_sender` must be a boolean";
      } else {
        push_str(err, "config: unknown key `");
        push(err, key.ptr, key.len);
        push_str(err, "`");
        free(key.ptr);
        return false;
      }
    } while (problem == NULL && eat(&j, ','));
    if (problem == NULL && !eat(&j, '}')) problem = "invalid JSON";
  }
  free(key.ptr);
  if (problem == NULL) return true;
  push_str(err, "config: ");
  push_str(err, problem);
  return false;
}

// ---- the policy ----

// Whether `word` occurs in `text` (overlapping occurrences included) with no ASCII letter or
// digit right before or after it.
static bool contains_word(const buf_t *text, const buf_t *word) {
  for (size_t at = 0; at + word->len <= text->len; at++) {
    if (memcmp(text->ptr + at, word->ptr, word->len) != 0) continue;
    size_t end = at + word->len;
    if ((at == 0 || !is_alnum(text->ptr[at - 1])) && (end == text->len || !is_alnum(text->ptr[end]))) return true;
  }
  return false;
}

static bool starts_with(const buf_t *text, size_t at, const char *prefix) {
  size_t n = strlen(prefix);
  return text->len - at >= n && memcmp(text->ptr + at, prefix, n) == 0;
}

static bool allowed(const uint8_t *host, size_t len) {
  for (size_t i = 0; i < allowed_domains.len; i++) {
    const buf_t *d = &allowed_domains.items[i];
    if (len == d->len && memcmp(host, d->ptr, len) == 0) return true;
    if (len > d->len && memcmp(host + len - d->len, d->ptr, d->len) == 0 && host[len - d->len - 1] == '.') return true;
  }
  return false;
}

// Finds the first link to a non-allowed domain (see plugins/rust-keyword for the rules) and
// stores its host in `host_at`/`host_len`.
static bool forbidden_link(const buf_t *text, size_t *host_at, size_t *host_len) {
  for (size_t at = 0; at < text->len; at++) {
    size_t from;
    if (starts_with(text, at, "http://")) from = at + 7;
    else if (starts_with(text, at, "https://")) from = at + 8;
    else if (starts_with(text, at, "www.")) {
      if (at > 0 && (is_alnum(text->ptr[at - 1]) || is_one_of(text->ptr[at - 1], WWW_AFTER))) continue;
      from = at;
    } else continue;
    size_t end = from;
    while (end < text->len && !is_one_of(text->ptr[end], HOST_END)) end++;
    size_t start = from;
    for (size_t i = from; i < end; i++)
      if (text->ptr[i] == '@') start = i + 1;
    size_t stop = start;
    while (stop < end && text->ptr[stop] != ':') stop++;
    while (stop > start && text->ptr[stop - 1] == '.') stop--;
    if (stop > start && !allowed(text->ptr + start, stop - start)) {
      *host_at = start;
      *host_len = stop - start;
      return true;
    }
  }
  return false;
}

// Reads the `text` field of the message object into `text`; false if there is none (or it is not a string).
static bool message_text(const policy_string_t *json, buf_t *text) {
  json_t j = {json->ptr, json->ptr + json->len};
  buf_t key = {0};
  bool found = false;
  if (eat(&j, '{') && !eat(&j, '}')) {
    do {
      key.len = 0;
      if (!string(&j, &key) || !eat(&j, ':')) break;
      ws(&j);
      if (key.len == 4 && memcmp(key.ptr, "text", 4) == 0 && j.p < j.end && *j.p == '"') {
        text->len = 0;
        found = string(&j, text);
        if (!found) break;
      } else if (!skip_value(&j)) {
        break;
      }
    } while (eat(&j, ','));
  }
  free(key.ptr);
  return found;
}

// Writes `v` in decimal into `out` (at least 21 bytes) and returns it.
static char *decimal(size_t v, char *out) {
  char tmp[21];
  size_t n = 0;
  do tmp[n++] = (char)('0' + v % 10), v /= 10;
  while (v);
  for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
  out[n] = 0;
  return out;
}

static void log_configured(void) {
  char words_n[21], domains_n[21];
  inboxd_policy_types_field_t fields[2];
  policy_string_set(&fields[0].key, "words");
  policy_string_set(&fields[0].value, decimal(words.len, words_n));
  policy_string_set(&fields[1].key, "allowed_domains");
  policy_string_set(&fields[1].value, decimal(allowed_domains.len, domains_n));
  inboxd_policy_log_list_field_t list = {fields, 2};
  policy_string_t message;
  policy_string_set(&message, "keyword filter configured");
  inboxd_policy_log_log(INBOXD_POLICY_TYPES_LEVEL_DEBUG, &message, &list);
}

bool exports_policy_init(policy_string_t *config, policy_string_t *err) {
  buf_t problem = {0};
  bool ok = parse_config(config->ptr, config->len, &problem);
  policy_string_free(config);
  if (!ok) {
    err->ptr = problem.ptr;
    err->len = problem.len;
    return false;
  }
  log_configured();
  return true;
}

static void reject(policy_verdict_t *ret, const char *code, buf_t *reason) {
  policy_string_t name;
  policy_string_set(&name, code);
  inboxd_policy_metrics_count(&name, 1);
  ret->tag = INBOXD_POLICY_TYPES_VERDICT_REJECT;
  policy_string_dup(&ret->val.reject.code, code);
  ret->val.reject.reason.ptr = reason->ptr;
  ret->val.reject.reason.len = reason->len;
  ret->val.reject.notify_sender = notify_sender;
}

void exports_policy_on_message(policy_envelope_t *envelope, policy_verdict_t *ret) {
  ret->tag = INBOXD_POLICY_TYPES_VERDICT_ACCEPT;
  buf_t text = {0}, reason = {0};
  if (message_text(&envelope->message_json, &text)) {
    ascii_lower(&text);
    size_t host_at, host_len;
    const buf_t *word = NULL;
    for (size_t i = 0; i < words.len && word == NULL; i++)
      if (contains_word(&text, &words.items[i])) word = &words.items[i];
    if (word != NULL) {
      push_str(&reason, "the word \"");
      push(&reason, word->ptr, word->len);
      push_str(&reason, "\" is not allowed");
      reject(ret, "keyword", &reason);
    } else if (forbidden_link(&text, &host_at, &host_len)) {
      push_str(&reason, "links to ");
      push(&reason, text.ptr + host_at, host_len);
      push_str(&reason, " are not allowed");
      reject(ret, "link", &reason);
    }
  }
  free(text.ptr);
  policy_envelope_free(envelope);
}

void exports_policy_on_deliver(policy_envelope_t *envelope, policy_string_t *inbox_of, policy_verdict_t *ret) {
  policy_envelope_free(envelope);
  policy_string_free(inbox_of);
  ret->tag = INBOXD_POLICY_TYPES_VERDICT_ACCEPT;
}
