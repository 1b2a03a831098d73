"""Keyword and link filter (on-message), Python version of plugins/rust-keyword: rejects
`keyword` for a configured word in `text`, `link` for a link to a non-allowed domain."""

import json
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, metrics
from wit_world.imports.types import Field, Level, Rejection, Verdict_Accept, Verdict_Reject

# Where a link starts (matches never overlap, so scanning match by match finds them all).
LINK_START = re.compile(r"https?://|www\.")
# The authority part of a link: up to the first space, tab, CR, LF, `/`, `?`, `#` or `\`.
AUTHORITY = re.compile(r"[^ \t\r\n/?#\\]*")
# Besides ASCII letters and digits, the characters after which `www.` is not a link start.
WWW_AFTER = "./@:-_"
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def is_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


class Filter:
    def __init__(self, words: list[str], allowed_domains: list[str], notify_sender: bool):
        self.words = words
        self.allowed_domains = allowed_domains
        self.notify_sender = notify_sender

    def check(self, text: str) -> tuple[str, str] | None:
        """The rejection (code, reason) for lower-cased `text`, or None."""
        for word in self.words:
            if contains_word(text, word):
                return "keyword", f'the word "{word}" is not allowed'
        for host in links(text):
            if not self.allowed(host):
                return "link", f"links to {host} are not allowed"
        return None

    def allowed(self, host: str) -> bool:
        return any(host == d or host.endswith("." + d) for d in self.allowed_domains)


def contains_word(text: str, word: str) -> bool:
    """Whether `word` occurs in `text` (overlapping occurrences included) with no ASCII letter
    or digit right before or after it."""
    at = text.find(word)
    while at != -1:
        end = at + len(word)
        if (at == 0 or not is_alnum(text[at - 1])) and (end == len(text) or not is_alnum(text[end])):
            return True
        at = text.find(word, at + 1)
    return False


def links(text: str):
    """The hosts of the links in `text`, in order (see plugins/rust-keyword for the rules)."""
    for match in LINK_START.finditer(text):
        start = match.end()
        if match.group() == "www.":
            before = text[match.start() - 1] if match.start() > 0 else ""
            if before and (is_alnum(before) or before in WWW_AFTER):
                continue
            start = match.start()
        authority = AUTHORITY.match(text, start).group()
        host = authority.rsplit("@", 1)[-1].split(":", 1)[0].rstrip(".")
        if host:
            yield host


def strings(key: str, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Err(f"config: `{key}` must be a list of non-empty strings")
    return [v.translate(ASCII_LOWER) for v in value]


def parse_config(config: str) -> Filter:
    try:
        parsed = json.loads(config)
    except ValueError as e:
        raise Err(f"config: {e}")
    if not isinstance(parsed, dict):
        raise Err("config: must be a JSON object")
    words, allowed_domains, notify_sender = [], [], True
    for key, value in parsed.items():
        if key == "words":
            words = strings(key, value)
        elif key == "allowed_domains":
            allowed_domains = strings(key, value)
        elif key == "notify_sender":
            if not isinstance(value, bool):
                raise Err("config: `notify_sender` must be a boolean")
            notify_sender = value
        else:
            raise Err(f"config: unknown key `{key}`")
    return Filter(words, allowed_domains, notify_sender)


# Set by init.
FILTER: Filter | None = None


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        global FILTER
        FILTER = parse_config(config)
        fields = [
            Field("words", str(len(FILTER.words))),
            Field("allowed_domains", str(len(FILTER.allowed_domains))),
        ]
        log.log(Level.DEBUG, "keyword filter configured", fields)

    def on_message(self, envelope):
        if FILTER is None:
            return Verdict_Accept()
        try:
            message = json.loads(envelope.message_json)
        except ValueError:
            return Verdict_Accept()
        text = message.get("text") if isinstance(message, dict) else None
        if not isinstance(text, str):
            return Verdict_Accept()
        found = FILTER.check(text.translate(ASCII_LOWER))
        if found is None:
            return Verdict_Accept()
        code, reason = found
        metrics.count(code, 1)
        return Verdict_Reject(Rejection(code, reason, FILTER.notify_sender))

    def on_deliver(self, envelope, inbox_of):
        return Verdict_Accept()
