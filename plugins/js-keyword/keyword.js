// Keyword and link filter (on-message), JavaScript version of plugins/rust-keyword: rejects
// `keyword` for a configured word in `text`, `link` for a link to a non-allowed domain.

import { log } from 'inboxd:policy/log@0.1.0';
import { count } from 'inboxd:policy/metrics@0.1.0';

// Where a link starts (matches never overlap, so scanning match by match finds them all).
const LINK_START = /https?:\/\/|www\./g;
// The authority part of a link: up to the first space, tab, CR, LF, `/`, `?`, `#` or `\`.
const AUTHORITY = /[^ \t\r\n/?#\\]*/y;
// Besides ASCII letters and digits, the characters after which `www.` is not a link start.
const WWW_AFTER = './@:-_';

// Set by init: lower-cased words and domains, and whether the sender is told.
let filter = null;

// ASCII-only lower-casing, as in the other languages (toLowerCase alone would also fold `É`).
const asciiLower = (s) => (NON_ASCII.test(s) ? s.replace(/[A-Z]+/g, (upper) => upper.toLowerCase()) : s.toLowerCase());
const NON_ASCII = /[^\x00-\x7f]/;
const isAlnum = (c) => c !== undefined && /^[a-z0-9A-Z]$/.test(c);

function strings(key, value) {
  const ok = Array.isArray(value) && value.every((v) => typeof v === 'string' && v.length > 0);
  if (!ok) throw `config: \`${key}\` must be a list of non-empty strings`;
  return value.map(asciiLower);
}

export function init(config) {
  let parsed;
  try {
    parsed = JSON.parse(config);
  } catch (e) {
    throw `config: ${e.message}`;
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw 'config: must be a JSON object';
  const next = { words: [], allowedDomains: [], notifySender: true };
  for (const [key, value] of Object.entries(parsed)) {
    if (key === 'words') next.words = strings(key, value);
    else if (key === 'allowed_domains') next.allowedDomains = strings(key, value);
    else if (key === 'notify_sender') {
      if (typeof value !== 'boolean') throw 'config: `notify_sender` must be a boolean';
      next.notifySender = value;
    } else throw `config: unknown key \`${key}\``;
  }
  filter = next;
  log('debug', 'keyword filter configured', [
    { key: 'words', value: String(next.words.length) },
    { key: 'allowed_domains', value: String(next.allowedDomains.length) },
  ]);
}

// Whether `word` occurs in `text` (overlapping occurrences included) with no ASCII letter or
// digit right before or after it.
function containsWord(text, word) {
  for (let at = text.indexOf(word); at !== -1; at = text.indexOf(word, at + 1)) {
    if (!isAlnum(text[at - 1]) && !isAlnum(text[at + word.length])) return true;
  }
  return false;
}

// The first link in `text` at or after `from` as [host, next search position], or null
// (see plugins/rust-keyword for the rules).
function nextLink(text, from) {
  for (LINK_START.lastIndex = from; ; ) {
    const match = LINK_START.exec(text);
    if (match === null) return null;
    let start = match.index + match[0].length;
    if (match[0] === 'www.') {
      const before = text[match.index - 1];
      if (isAlnum(before) || (before !== undefined && WWW_AFTER.includes(before))) continue;
      start = match.index;
    }
    const next = LINK_START.lastIndex;
    AUTHORITY.lastIndex = start;
    const authority = AUTHORITY.exec(text)[0];
    const host = authority.slice(authority.lastIndexOf('@') + 1).split(':')[0].replace(/\.+$/, '');
    if (host.length > 0) return [host, next];
  }
}

function allowed(host) {
  return filter.allowedDomains.some((d) => host === d || host.endsWith(`.${d}`));
}

// The rejection [code, reason] for lower-cased `text`, or null.
function check(text) {
  const word = filter.words.find((w) => containsWord(text, w));
  if (word !== undefined) return ['keyword', `the word "${word}" is not allowed`];
  for (let link = nextLink(text, 0); link !== null; link = nextLink(text, link[1])) {
    if (!allowed(link[0])) return ['link', `links to ${link[0]} are not allowed`];
  }
  return null;
}

export function onMessage(envelope) {
  if (filter === null) return { tag: 'accept' };
  let message;
  try {
    message = JSON.parse(envelope.messageJson);
  } catch {
    return { tag: 'accept' };
  }
  const text = message === null ? undefined : message.text;
  if (typeof text !== 'string') return { tag: 'accept' };
  const found = check(asciiLower(text));
  if (found === null) return { tag: 'accept' };
  const [code, reason] = found;
  count(code, 1n);
  return { tag: 'reject', val: { code, reason, notifySender: filter.notifySender } };
}

export function onDeliver(_envelope, _inboxOf) {
  return { tag: 'accept' };
}
