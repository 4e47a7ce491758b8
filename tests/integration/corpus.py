"""Deterministic mail corpora for the integration tests.

Standard corpus (``load_standard_corpus(dv)``): ~410 messages in nested,
non-ASCII, spaced, empty, \\Noselect-parent and unsubscribed mailboxes,
a ~5 MB message with a base64 attachment, raw 8-bit Latin-1 / UTF-8
bodies, varied flags and INTERNALDATEs (several time zones), and planted
"needle-<hex>" strings whose (mailbox, uid) is known. It returns a
`Manifest` built from what the server reports (UID FETCH ... RFC822.SIZE
INTERNALDATE FLAGS), checked against the bytes that were sent.

Benchmark corpus (``load_bench_corpus(dv, n)``): n messages (median ~8 KB,
long tail to a few MB; 10,000 messages ~150 MB) in several folders, loaded
by imaplib APPEND, pipelined LITERAL+ APPEND, or by writing maildir files
directly and letting Dovecot index them.

Mailbox names in the manifest are *logical paths*: Unicode, components
joined with "/" whatever the server delimiter ("Archive/2024/Q1",
"Réunions"). ``Manifest.imap_names[path]`` is the wire name (modified UTF-7,
server delimiter). Message bytes use CRLF line ends as sent.
"""

import base64
import datetime
import email.utils
import hashlib
import os
import random
import re
import socket
import time

__all__ = [
    "mutf7_encode", "mutf7_decode", "Manifest", "CorpusSpec", "MessageSpec",
    "build_standard_corpus", "load_standard_corpus", "load_spec",
    "fetch_manifest", "plant_needles", "list_mailboxes",
    "generate_bench_corpus", "load_bench_corpus", "STANDARD_FOLDERS",
    "imap_date", "parse_imap_date", "to_imap_name",
]

CRLF = b"\r\n"

# --------------------------------------------------------------------------
# Modified UTF-7 (RFC 3501 section 5.1.3)


def mutf7_encode(name):
    """Unicode mailbox name -> modified UTF-7 (str, ASCII only)."""
    out = []
    buf = []

    def flush():
        if buf:
            b = "".join(buf).encode("utf-16-be")
            out.append("&" + base64.b64encode(b).decode("ascii")
                       .rstrip("=").replace("/", ",") + "-")
            buf.clear()

    for ch in name:
        o = ord(ch)
        if 0x20 <= o <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            buf.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(s):
    """Modified UTF-7 -> Unicode. Raises ValueError on malformed input."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    out = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch != "&":
            if not 0x20 <= ord(ch) <= 0x7E:
                raise ValueError("non-ASCII in modified UTF-7")
            out.append(ch)
            i += 1
            continue
        j = s.find("-", i + 1)
        if j < 0:
            raise ValueError("unterminated & in modified UTF-7")
        if j == i + 1:
            out.append("&")
        else:
            b64 = s[i + 1:j].replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            raw = base64.b64decode(b64, validate=True)
            if len(raw) % 2:
                raise ValueError("odd UTF-16 length")
            out.append(raw.decode("utf-16-be"))
        i = j + 1
    return "".join(out)


def to_imap_name(path, delimiter="/"):
    """Logical path ("Réunions/Été 2024") -> IMAP wire name."""
    if path.upper() == "INBOX":
        return "INBOX"
    parts = path.split("/")
    for p in parts:
        if delimiter in p or not p:
            raise ValueError("bad mailbox component %r for delimiter %r" % (
                p, delimiter))
    return delimiter.join(mutf7_encode(p) for p in parts)


def _q(name):
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------
# Dates

_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
           "Oct", "Nov", "Dec"]


def imap_date(dt):
    """Aware datetime -> IMAP date-time string (without quotes)."""
    off = dt.utcoffset()
    mins = int(off.total_seconds() // 60)
    sign = "+" if mins >= 0 else "-"
    mins = abs(mins)
    return "%02d-%s-%04d %02d:%02d:%02d %s%02d%02d" % (
        dt.day, _MONTHS[dt.month - 1], dt.year, dt.hour, dt.minute,
        dt.second, sign, mins // 60, mins % 60)


def parse_imap_date(s):
    """IMAP date-time ("17-Jul-1996 02:44:25 -0700") -> aware datetime."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    m = re.match(r'\s*(\d{1,2})-(\w{3})-(\d{4}) (\d\d):(\d\d):(\d\d) '
                 r'([+-])(\d\d)(\d\d)', s.strip().strip('"'))
    if not m:
        raise ValueError("bad IMAP date %r" % s)
    d, mon, y, hh, mm, ss, sg, oh, om = m.groups()
    off = datetime.timedelta(hours=int(oh), minutes=int(om))
    if sg == "-":
        off = -off
    return datetime.datetime(int(y), _MONTHS.index(mon.capitalize()) + 1,
                             int(d), int(hh), int(mm), int(ss),
                             tzinfo=datetime.timezone(off))


# --------------------------------------------------------------------------
# Message generation

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are "
    "or his from at which but have an they you were her she there one all "
    "we their has been would more when if no will out so up said what its "
    "about into than them can only other new some could time these two may "
    "then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your "
    "way well down should because each just those people how too little "
    "state good very make world still own see men work long get here "
    "between both life being under never day same another know while last "
    "might us great old year off come since against go came right used take "
    "three meeting budget review quarterly report invoice attached please "
    "regards thanks agenda minutes project deadline server mailbox archive "
    "release schedule draft proposal contract customer support ticket "
    "filesystem mount cache latency throughput benchmark").split()
_WORDS_LATIN1 = ("café naïve façade déjà vu Größe Straße Ärger élève "
                 "crème brûlée piñata señor où été réunion").split()
_WORDS_UTF8 = _WORDS_LATIN1 + ("日本語 Ελληνικά русский 中文 emoji 😀 "
                               "€uro łódź Čeština").split()
_NAMES = ["Alice Martin", "Bob Dupont", "Carol Schmidt", "Dave Nguyen",
          "Eve Müller", "Frank O'Neil", "Grace Hopper", "Heidi Klum",
          "Ivan Petrov", "Judy García"]


def _words(rng, n, vocab=_WORDS):
    return " ".join(rng.choice(vocab) for _ in range(n))


def _wrap(text, width=72):
    lines, cur, n = [], [], 0
    for w in text.split(" "):
        if cur and n + 1 + len(w) > width:
            lines.append(" ".join(cur))
            cur, n = [], 0
        cur.append(w)
        n += len(w) + (1 if n else 0)
    if cur:
        lines.append(" ".join(cur))
    return lines


def _paragraphs(rng, approx_bytes, vocab=_WORDS):
    """Text of about approx_bytes characters as a list of lines."""
    lines = []
    total = 0
    while total < approx_bytes:
        para = _wrap(_words(rng, rng.randint(20, 90), vocab))
        lines.extend(para)
        lines.append("")
        total += sum(len(l) + 2 for l in para) + 2
    return lines


def _addr(rng):
    name = rng.choice(_NAMES)
    local = name.split()[0].lower()
    return name, "%s@example.test" % local


def _fmt_addr(name, addr):
    if all(ord(c) < 128 for c in name):
        if "'" in name or "," in name:
            name = '"%s"' % name
        return "%s <%s>" % (name, addr)
    return "%s <%s>" % (_rfc2047(name), addr)


def _rfc2047(s):
    return "=?UTF-8?B?%s?=" % base64.b64encode(s.encode()).decode()


def _b64_lines(data):
    enc = base64.b64encode(data)
    return [enc[i:i + 76] for i in range(0, len(enc), 76)]


def _qp(text):
    """Minimal quoted-printable encoding of UTF-8 text (lines <= 76)."""
    out = []
    for line in text.split("\n"):
        enc = []
        for b in line.encode("utf-8"):
            if (33 <= b <= 126 and b != 61) or b == 32:
                enc.append(chr(b))
            else:
                enc.append("=%02X" % b)
        if enc and enc[-1] == " ":
            enc[-1] = "=20"
        cur = ""
        for tok in enc:
            if len(cur) + len(tok) > 75:
                out.append(cur + "=")
                cur = ""
            cur += tok
        out.append(cur)
    return out


class MessageSpec:
    """One message to load: bytes, internaldate, flags, needles."""

    __slots__ = ("data", "internaldate", "flags", "needles", "message_id",
                 "subject", "kind")

    def __init__(self, data, internaldate, flags=(), needles=(),
                 message_id=None, subject=None, kind="text"):
        self.data = data
        self.internaldate = internaldate
        self.flags = tuple(flags)
        self.needles = list(needles)
        self.message_id = message_id
        self.subject = subject
        self.kind = kind


class _Recipe:
    """Description of a message, rendered to bytes after needle planting."""

    def __init__(self, kind, idx, date, flags, size, subject=None):
        self.kind = kind
        self.idx = idx
        self.date = date
        self.flags = flags
        self.size = size
        self.subject = subject
        self.needles = []
        self.needle_in_subject = False


def _render(rng, r, seed):
    """Render a _Recipe to CRLF bytes. Needles go into a text line."""
    msgid = "<corpus-%d-%05d@imapfuse.test>" % (seed, r.idx)
    fname, faddr = _addr(rng)
    tname, taddr = _addr(rng)
    subject = r.subject or _words(rng, rng.randint(2, 8)).capitalize()
    if r.needle_in_subject and r.needles:
        subject += " [%s]" % r.needles[0]
    hdr = [
        "Return-Path: <%s>" % faddr,
        "Received: from mx.example.test (mx.example.test [192.0.2.1])",
        "\tby imap.example.test with ESMTP id %08X;" % rng.getrandbits(32),
        "\t%s" % email.utils.format_datetime(r.date),
        "Date: %s" % email.utils.format_datetime(r.date),
        "From: %s" % _fmt_addr(fname, faddr),
        "To: %s" % _fmt_addr(tname, taddr),
        "Message-ID: %s" % msgid,
    ]
    if r.kind == "raw8bit-header":
        hdr.append("Subject: %s" % subject)  # raw UTF-8 below
    elif any(ord(c) > 127 for c in subject):
        hdr.append("Subject: %s" % _rfc2047(subject))
    else:
        hdr.append("Subject: %s" % subject)
    hdr.append("MIME-Version: 1.0")
    needle_lines = ["Reference: %s" % n for n in r.needles
                    if not (r.needle_in_subject and n == r.needles[0])]
    body = []  # list of str or bytes lines
    k = r.kind
    size = r.size
    if k == "empty-body":
        hdr.append("Content-Type: text/plain; charset=us-ascii")
        body = needle_lines
    elif k in ("text", "raw8bit-header"):
        hdr.append("Content-Type: text/plain; charset=%s" % (
            "utf-8" if k == "raw8bit-header" else "us-ascii"))
        hdr.append("Content-Transfer-Encoding: %s" % (
            "8bit" if k == "raw8bit-header" else "7bit"))
        lines = _paragraphs(rng, size)
        pos = rng.randint(0, len(lines))
        body = lines[:pos] + needle_lines + lines[pos:]
    elif k in ("latin1", "utf8"):
        vocab = _WORDS + (_WORDS_LATIN1 if k == "latin1" else _WORDS_UTF8) * 3
        cs = "iso-8859-1" if k == "latin1" else "utf-8"
        hdr.append("Content-Type: text/plain; charset=%s" % cs)
        hdr.append("Content-Transfer-Encoding: 8bit")
        lines = _paragraphs(rng, size, vocab)
        pos = rng.randint(0, len(lines))
        lines = lines[:pos] + needle_lines + lines[pos:]
        body = [l.encode(cs) for l in lines]
    elif k == "qp":
        hdr.append("Content-Type: text/plain; charset=utf-8")
        hdr.append("Content-Transfer-Encoding: quoted-printable")
        lines = _paragraphs(rng, size, _WORDS + _WORDS_UTF8)
        body = needle_lines + _qp("\n".join(lines))
    elif k == "alternative":
        b = "alt-%016x" % rng.getrandbits(64)
        hdr.append('Content-Type: multipart/alternative; boundary="%s"' % b)
        text = _paragraphs(rng, size // 2)
        html = ["<html><body>"] + ["<p>%s</p>" % l for l in text if l] + [
            "</body></html>"]
        body = (["This is a multi-part message in MIME format.", "",
                 "--" + b, "Content-Type: text/plain; charset=us-ascii", ""]
                + needle_lines + text +
                ["--" + b, "Content-Type: text/html; charset=us-ascii", ""]
                + html + ["--" + b + "--", ""])
    elif k in ("attachment", "large"):
        b = "mix-%016x" % rng.getrandbits(64)
        hdr.append('Content-Type: multipart/mixed; boundary="%s"' % b)
        if k == "large":
            # ~5 MB total: base64 of 3.7 MB of bytes (76-char lines).
            payload = rng.randbytes(3_700_000)
            text = _paragraphs(rng, 2000)
            fname_att = "dataset-%d.bin" % r.idx
        else:
            payload = rng.randbytes(max(200, size * 3 // 4))
            text = _paragraphs(rng, 600)
            fname_att = "report-%d.pdf" % r.idx
        # needles: first one before the attachment, the rest after it
        # (so a grep has to read the whole file).
        first, rest = needle_lines[:1], needle_lines[1:]
        body = (["--" + b, "Content-Type: text/plain; charset=us-ascii", ""]
                + first + text +
                ["--" + b,
                 'Content-Type: application/octet-stream; name="%s"' %
                 fname_att, "Content-Transfer-Encoding: base64",
                 'Content-Disposition: attachment; filename="%s"' %
                 fname_att, ""]
                + _b64_lines(payload) +
                ["--" + b, "Content-Type: text/plain; charset=us-ascii", ""]
                + ["End of attachment."] + rest + ["--" + b + "--", ""])
    else:
        raise ValueError(k)
    out = []
    for line in hdr:
        out.append(line.encode("utf-8") if isinstance(line, str) else line)
    out.append(b"")
    for line in body:
        out.append(line.encode("ascii") if isinstance(line, str) else line)
    data = CRLF.join(out)
    if not data.endswith(CRLF):
        data += CRLF
    return MessageSpec(data, r.date, r.flags, r.needles, msgid, subject, k)


# --------------------------------------------------------------------------
# Corpus description

class CorpusSpec:
    """Folders (logical paths) with their messages, before loading.

    folders: {path: [MessageSpec]} in creation order (parents first).
    unsubscribed: paths not to SUBSCRIBE. noselect: paths expected to be
    \\Noselect (never created, children are). needles: {needle: (path,
    index in folders[path])}.
    """

    def __init__(self, seed):
        self.seed = seed
        self.folders = {}
        self.unsubscribed = set()
        self.noselect = []
        self.needles = {}

    @property
    def total_messages(self):
        return sum(len(v) for v in self.folders.values())

    @property
    def total_bytes(self):
        return sum(len(m.data) for v in self.folders.values() for m in v)


# (path, count, year, kinds weights override)
STANDARD_FOLDERS = [
    ("INBOX", 120, 2025),
    ("Archive", 10, 2022),
    ("Archive/2023", 80, 2023),
    ("Archive/2024", 5, 2024),
    ("Archive/2024/Q1", 60, 2024),
    ("Parent/Child", 12, 2024),       # "Parent" is \Noselect
    ("Réunions", 20, 2024),           # R&AOk-unions
    ("Réunions/Été 2024", 5, 2024),   # non-ASCII + space, nested
    ("R&D", 8, 2024),                 # R&-D
    ("Project Notes", 30, 2025),
    ("Encodings", 30, 2025),          # 8-bit Latin-1/UTF-8, QP, raw header
    ("Attachments", 10, 2025),        # + the ~5 MB message
    ("Sent", 15, 2025),
    ("Drafts", 2, 2025),
    ("Trash", 0, 2025),
    ("Empty", 0, 2025),
    ("Unsubscribed", 4, 2025),
]
STANDARD_NOSELECT = ["Parent"]
_TZS = [datetime.timezone.utc,
        datetime.timezone(datetime.timedelta(hours=1)),
        datetime.timezone(datetime.timedelta(hours=2)),
        datetime.timezone(datetime.timedelta(hours=-5)),
        datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
        datetime.timezone(datetime.timedelta(hours=-9, minutes=-30))]


def _flags(rng, path):
    if path == "Drafts":
        return ("\\Draft",)
    if path == "Sent":
        return ("\\Seen",)
    f = []
    if rng.random() < 0.6:
        f.append("\\Seen")
    if rng.random() < 0.1:
        f.append("\\Flagged")
    if rng.random() < 0.1:
        f.append("\\Answered")
    if rng.random() < 0.04:
        f.append("$Forwarded")
    if rng.random() < 0.03:
        f.append("Work")
    return tuple(f)


def _kind(rng, path):
    if path == "Encodings":
        return rng.choice(["latin1", "utf8", "qp", "latin1", "utf8"])
    if path == "Attachments":
        return "attachment"
    x = rng.random()
    if x < 0.55:
        return "text"
    if x < 0.70:
        return "alternative"
    if x < 0.80:
        return "attachment"
    if x < 0.87:
        return "utf8"
    if x < 0.92:
        return "latin1"
    return "qp"


def _size(rng, kind):
    if kind == "attachment":
        return int(min(400_000, rng.lognormvariate(10.3, 0.8)))  # ~30 KB
    return int(min(60_000, max(150, rng.lognormvariate(8.3, 0.8))))  # ~4 KB


def build_standard_corpus(seed=1, n_needles=24):
    """The standard corpus as a CorpusSpec (nothing touches a server)."""
    rng = random.Random(seed)
    spec = CorpusSpec(seed)
    spec.noselect = list(STANDARD_NOSELECT)
    spec.unsubscribed = {"Unsubscribed"}
    recipes = {}
    idx = 0
    for path, count, year in STANDARD_FOLDERS:
        rl = []
        for i in range(count):
            tz = rng.choice(_TZS)
            date = datetime.datetime(year, 1, 1, tzinfo=tz) + \
                datetime.timedelta(seconds=rng.randrange(364 * 86400))
            kind = _kind(rng, path)
            rl.append(_Recipe(kind, idx, date, _flags(rng, path),
                              _size(rng, kind)))
            idx += 1
        recipes[path] = rl
    # Fixed special messages.
    d = datetime.datetime(2025, 3, 14, 15, 9, 26,
                          tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    big = _Recipe("large", idx, d, ("\\Seen",), 0,
                  subject="Large dataset (5 MB attachment)")
    idx += 1
    recipes["Attachments"].append(big)
    raw_hdr = _Recipe("raw8bit-header", idx, d, (), 800,
                      subject="Réunion über Größe – 8bit header")
    idx += 1
    recipes["Encodings"].append(raw_hdr)
    tiny = _Recipe("empty-body", idx, d, (), 0, subject="tiny")
    idx += 1
    recipes["INBOX"].append(tiny)
    # Two \Deleted (not expunged) messages.
    for r in recipes["Archive/2023"][3:5]:
        r.flags = tuple(sorted(set(r.flags) | {"\\Deleted"}))
    # Needles: fixed targets first (hard cases), then random ones.
    targets = [
        (big, False),                                  # end of 5 MB file
        (big, False),
        (raw_hdr, True),                               # in a raw 8-bit Subject
        (tiny, False),
        (recipes["Archive/2024/Q1"][7], False),
        (recipes["Parent/Child"][0], False),
        (recipes["Réunions"][3], True),                # in Subject
        (recipes["Réunions/Été 2024"][1], False),
        (recipes["Project Notes"][11], False),
        (recipes["R&D"][2], False),
        (next(r for r in recipes["Encodings"] if r.kind == "latin1"), False),
        (next(r for r in recipes["Encodings"] if r.kind == "utf8"), False),
        (recipes["INBOX"][0], False),
        (recipes["INBOX"][-2], False),
    ]
    pool = [(p, r) for p, rl in recipes.items() for r in rl
            if p not in ("Unsubscribed",)]
    while len(targets) < n_needles:
        targets.append((rng.choice(pool)[1], False))
    targets = targets[:n_needles]
    where = {}
    for p, rl in recipes.items():
        for i, r in enumerate(rl):
            where[id(r)] = (p, i)
    for r, in_subject in targets:
        needle = "needle-%016x" % rng.getrandbits(64)
        if in_subject and not r.needles:
            r.needle_in_subject = True
        r.needles.append(needle)
        spec.needles[needle] = where[id(r)]
    for path, _c, _y in STANDARD_FOLDERS:
        spec.folders[path] = [_render(rng, r, seed) for r in recipes[path]]
    return spec


# --------------------------------------------------------------------------
# Manifest

class Manifest:
    """What the server holds after loading, keyed by logical path.

    mailboxes[path] -> list of dicts sorted by uid:
        uid, size (RFC822.SIZE from the server), internaldate (aware
        datetime), internaldate_str, mtime (epoch seconds), flags (tuple),
        needles (list), message_id, subject, kind, sha256
    imap_names[path] -> wire name; uidvalidity[path]; noselect (paths);
    unsubscribed (paths); needles: {needle: (path, uid)}.
    raw(path, uid) -> bytes exactly as APPENDed (== BODY[]).
    """

    def __init__(self, delimiter):
        self.delimiter = delimiter
        self.mailboxes = {}
        self.imap_names = {}
        self.uidvalidity = {}
        self.noselect = []
        self.unsubscribed = set()
        self.needles = {}
        self._raw = {}
        self.load_seconds = None

    def __repr__(self):
        return "<Manifest %d mailboxes, %d messages, %d bytes>" % (
            len(self.mailboxes), self.total_messages, self.total_bytes)

    @property
    def total_messages(self):
        return sum(len(v) for v in self.mailboxes.values())

    @property
    def total_bytes(self):
        return sum(m["size"] for v in self.mailboxes.values() for m in v)

    def messages(self, path):
        return self.mailboxes[path]

    def message(self, path, uid):
        for m in self.mailboxes[path]:
            if m["uid"] == uid:
                return m
        raise KeyError((path, uid))

    def raw(self, path, uid):
        return self._raw[(path, uid)]

    def find(self, pred):
        """[(path, msg)] for which pred(path, msg) is true."""
        return [(p, m) for p, ms in self.mailboxes.items() for m in ms
                if pred(p, m)]

    def largest(self):
        return max(((p, m) for p, ms in self.mailboxes.items() for m in ms),
                   key=lambda pm: pm[1]["size"])


_FETCH_RE = {
    "uid": re.compile(rb"\bUID (\d+)"),
    "size": re.compile(rb"\bRFC822\.SIZE (\d+)"),
    "internaldate": re.compile(rb'\bINTERNALDATE "([^"]+)"'),
    "flags": re.compile(rb"\bFLAGS \(([^)]*)\)"),
}


def _parse_fetch(data):
    """imaplib FETCH data -> list of (meta dict, literal bytes or None)."""
    out = []
    i = 0
    while i < len(data):
        item = data[i]
        lit = None
        if isinstance(item, tuple):
            head, lit = item
            # trailing part after the literal is the next bytes element
            tail = b""
            if i + 1 < len(data) and isinstance(data[i + 1], bytes):
                tail = data[i + 1]
                i += 1
            text = head + b" " + tail
        elif item is None:
            i += 1
            continue
        else:
            text = item
        i += 1
        meta = {}
        for k, rx in _FETCH_RE.items():
            m = rx.search(text)
            if m:
                meta[k] = m.group(1)
        if "uid" in meta:
            out.append((meta, lit))
    return out


def fetch_listing(conn, imap_name):
    """[{uid, size, internaldate, internaldate_str, flags, message_id}]."""
    typ, data = conn.select(_q(imap_name), readonly=True)
    if typ != "OK":
        raise RuntimeError("EXAMINE %s: %s" % (imap_name, data))
    uidvalidity = None
    r = conn.response("UIDVALIDITY")[1]
    if r and r[0]:
        uidvalidity = int(r[0])
    exists = int(data[0])
    res = []
    if exists:
        typ, data = conn.uid(
            "FETCH", "1:*", "(UID RFC822.SIZE INTERNALDATE FLAGS "
            "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        if typ != "OK":
            raise RuntimeError("UID FETCH %s: %s" % (imap_name, data))
        for meta, lit in _parse_fetch(data):
            mid = None
            if lit:
                m = re.search(rb"Message-ID:\s*(<[^>]*>)", lit, re.I)
                mid = m.group(1).decode() if m else None
            ds = meta["internaldate"].decode()
            dt = parse_imap_date(ds)
            res.append({
                "uid": int(meta["uid"]), "size": int(meta["size"]),
                "internaldate": dt, "internaldate_str": ds,
                "mtime": dt.timestamp(),
                "flags": tuple(sorted(f for f in meta["flags"].decode().split()
                                      if f != "\\Recent")),
                "message_id": mid,
            })
    conn.close()
    res.sort(key=lambda m: m["uid"])
    return uidvalidity, res


def list_mailboxes(conn):
    """{wire name: (flags set, delimiter)} from LIST "" "*"."""
    typ, data = conn.list('""', "*")
    if typ != "OK":
        raise RuntimeError("LIST: %s" % data)
    out = {}
    rx = re.compile(rb'\(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") (.*)$')
    i = 0
    while i < len(data):
        item = data[i]
        if isinstance(item, tuple):  # name sent as a literal
            m = rx.match(item[0].rstrip() + b" ")
            flags, delim = m.group(1), m.group(2)
            name = item[1]
        else:
            m = rx.match(item)
            flags, delim, name = m.group(1), m.group(2), m.group(3)
            if name.startswith(b'"'):
                name = re.sub(rb'\\(.)', rb'\1', name[1:-1])
        d = None if delim == b"NIL" else re.sub(
            rb'\\(.)', rb'\1', delim[1:-1]).decode()
        out[name.decode()] = (set(flags.decode().split()), d)
        i += 1
    return out


def list_subscribed(conn):
    typ, data = conn.lsub('""', "*")
    out = set()
    for item in data:
        if not item:
            continue
        if isinstance(item, tuple):
            out.add(item[1].decode())
            continue
        m = re.match(rb'\([^)]*\) (?:NIL|"(?:[^"\\]|\\.)*") (.*)$', item)
        name = m.group(1)
        if name.startswith(b'"'):
            name = re.sub(rb'\\(.)', rb'\1', name[1:-1])
        out.add(name.decode())
    return out


def fetch_manifest(conn, spec, delimiter):
    """Build a Manifest for `spec` from the server's own answers."""
    man = Manifest(delimiter)
    man.noselect = list(spec.noselect)
    man.unsubscribed = set(spec.unsubscribed)
    by_id = {}
    for path, msgs in spec.folders.items():
        for m in msgs:
            by_id[m.message_id] = (path, m)
    for path, msgs in spec.folders.items():
        name = to_imap_name(path, delimiter)
        man.imap_names[path] = name
        uidv, listing = fetch_listing(conn, name)
        man.uidvalidity[path] = uidv
        entries = []
        for e in listing:
            src = by_id.get(e["message_id"])
            if src is None or src[0] != path:
                raise RuntimeError("unexpected message %s in %s" % (
                    e["message_id"], path))
            m = src[1]
            if e["size"] != len(m.data):
                raise RuntimeError(
                    "%s uid %d: server RFC822.SIZE %d != %d bytes sent" % (
                        path, e["uid"], e["size"], len(m.data)))
            e.update(needles=list(m.needles), subject=m.subject, kind=m.kind,
                     sha256=hashlib.sha256(m.data).hexdigest())
            man._raw[(path, e["uid"])] = m.data
            for n in m.needles:
                man.needles[n] = (path, e["uid"])
            entries.append(e)
        if len(entries) != len(msgs):
            raise RuntimeError("%s: %d messages on server, %d loaded" % (
                path, len(entries), len(msgs)))
        man.mailboxes[path] = entries
    return man


# --------------------------------------------------------------------------
# Loading

def _connect(target):
    """Accept a Dovecot (has .imap()) or an imaplib connection."""
    if hasattr(target, "imap"):
        return target.imap(), True
    return target, False


def _delimiter(conn):
    typ, data = conn.list('""', '""')
    m = re.match(rb'\([^)]*\) "((?:[^"\\]|\\.)*)"', data[0])
    return m.group(1).replace(b"\\\\", b"\\").decode() if m else "/"


def create_folders(conn, spec, delimiter):
    for path in spec.folders:
        if path.upper() == "INBOX":
            continue
        name = to_imap_name(path, delimiter)
        typ, data = conn.create(_q(name))
        if typ != "OK" and b"ALREADYEXISTS" not in data[0]:
            raise RuntimeError("CREATE %s: %s" % (name, data))
    for path in spec.folders:
        if path not in spec.unsubscribed:
            typ, data = conn.subscribe(_q(to_imap_name(path, delimiter)))
            if typ != "OK":
                raise RuntimeError("SUBSCRIBE %s: %s" % (path, data))


def _append(conn, name, m):
    flags = "(" + " ".join(m.flags) + ")" if m.flags else None
    typ, data = conn.append(_q(name), flags, '"%s"' % imap_date(
        m.internaldate), m.data)
    if typ != "OK":
        raise RuntimeError("APPEND to %s: %s" % (name, data))


def load_spec(target, spec):
    """CREATE/SUBSCRIBE the folders and APPEND every message (imaplib).
    Returns the Manifest (built with fetch_manifest)."""
    conn, own = _connect(target)
    try:
        t0 = time.monotonic()
        delim = _delimiter(conn)
        create_folders(conn, spec, delim)
        for path, msgs in spec.folders.items():
            name = to_imap_name(path, delim)
            for m in msgs:
                _append(conn, name, m)
        man = fetch_manifest(conn, spec, delim)
        man.load_seconds = time.monotonic() - t0
        return man
    finally:
        if own:
            conn.logout()


_STANDARD_CACHE = {}


def load_standard_corpus(target, seed=1, n_needles=24):
    """Load the standard corpus into a Dovecot (or imaplib connection)."""
    key = (seed, n_needles)
    if key not in _STANDARD_CACHE:
        _STANDARD_CACHE[key] = build_standard_corpus(seed, n_needles)
    return load_spec(target, _STANDARD_CACHE[key])


def plant_needles(target, mailbox="INBOX", n=5, seed=0, prefix="needle"):
    """APPEND n small messages, each holding one unique needle string.

    mailbox is a logical path (created if missing). Returns
    {needle: (mailbox, uid)} using APPENDUID (or a UID SEARCH fallback).
    """
    rng = random.Random(seed)
    conn, own = _connect(target)
    try:
        delim = _delimiter(conn)
        name = to_imap_name(mailbox, delim)
        if mailbox.upper() != "INBOX":
            conn.create(_q(name))
        out = {}
        for i in range(n):
            needle = "%s-%016x" % (prefix, rng.getrandbits(64))
            date = datetime.datetime(2025, 5, 1, tzinfo=datetime.timezone.utc
                                     ) + datetime.timedelta(hours=i)
            r = _Recipe("text", 90000 + i, date, (), 1500,
                        subject="Needle message %d" % i)
            r.needles = [needle]
            m = _render(rng, r, seed)
            flags = None
            typ, data = conn.append(_q(name), flags, '"%s"' % imap_date(date),
                                    m.data)
            if typ != "OK":
                raise RuntimeError("APPEND: %s" % data)
            mm = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            if mm:
                uid = int(mm.group(1))
            else:
                conn.select(_q(name))
                typ, d = conn.uid("SEARCH", "HEADER", "Message-ID",
                                  _q(m.message_id))
                uid = int(d[0].split()[-1])
                conn.close()
            out[needle] = (mailbox, uid)
        return out
    finally:
        if own:
            conn.logout()


# --------------------------------------------------------------------------
# Benchmark corpus

BENCH_FOLDERS = ["INBOX", "Bench/Lists", "Bench/Work", "Bench/Archive/2022",
                 "Bench/Archive/2023", "Bench/Archive/2024", "Bench/Notifications"]


def _bench_size(rng, i, n):
    # ~0.1 % big messages (1-4 MB); rest lognormal median 8 KB, capped 1 MB.
    if rng.random() < 0.001:
        return rng.randint(1_000_000, 4_000_000)
    return int(min(1_000_000, max(600, rng.lognormvariate(9.01, 1.0))))


class _TextPool:
    def __init__(self, rng):
        lines = _paragraphs(rng, 300_000)
        self.text = ("\r\n".join(lines) + "\r\n").encode()

    def take(self, rng, n):
        if n <= 0:
            return b""
        start = rng.randrange(0, len(self.text) - 1)
        start = self.text.find(b"\r\n", start) + 2  # a line start
        if start >= len(self.text):
            start = 0
        out = bytearray()
        while len(out) < n:
            chunk = self.text[start:start + (n - len(out))]
            out += chunk
            start = 0
        cut = out.rfind(b"\r\n")
        return bytes(out[:cut + 2]) if cut > 0 else bytes(out) + b"\r\n"


def generate_bench_corpus(n=10000, seed=2, folders=BENCH_FOLDERS):
    """Yield (folder path, MessageSpec) for n messages, deterministically.

    Sizes: median ~8 KB, lognormal tail, ~0.1% of 1-4 MB attachments;
    n=10000 is ~150 MB. Messages are generated lazily.
    """
    rng = random.Random(seed)
    pool = _TextPool(random.Random(seed + 1))
    weights = [30, 20, 15, 10, 10, 10, 5][:len(folders)] + \
        [5] * max(0, len(folders) - 7)
    base = datetime.datetime(2022, 1, 1, tzinfo=datetime.timezone.utc)
    for i in range(n):
        folder = rng.choices(folders, weights)[0]
        size = _bench_size(rng, i, n)
        date = base + datetime.timedelta(seconds=int(i * (3 * 365 * 86400 / max(n, 1)))
                                         + rng.randrange(3600))
        date = date.astimezone(rng.choice(_TZS))
        fname, faddr = _addr(rng)
        msgid = "<bench-%d-%06d@imapfuse.test>" % (seed, i)
        subject = "Bench message %d: %s" % (i, _words(rng, 4))
        hdr = ("Date: %s\r\nFrom: %s\r\nTo: bench@example.test\r\n"
               "Message-ID: %s\r\nSubject: %s\r\nMIME-Version: 1.0\r\n" % (
                   email.utils.format_datetime(date), _fmt_addr(fname, faddr),
                   msgid, subject)).encode()
        if size > 200_000:
            b = b"bench-%016x" % rng.getrandbits(64)
            raw = rng.randbytes(size * 3 // 4)
            enc = base64.encodebytes(raw).replace(b"\n", b"\r\n")
            data = (hdr + b'Content-Type: multipart/mixed; boundary="' + b +
                    b'"\r\n\r\n--' + b + b"\r\nContent-Type: text/plain\r\n\r\n"
                    + pool.take(rng, 1500) + b"--" + b +
                    b"\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Transfer-Encoding: base64\r\n\r\n" + enc +
                    b"--" + b + b"--\r\n")
        else:
            data = (hdr + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
                    + pool.take(rng, size - len(hdr) - 45))
        flags = ("\\Seen",) if rng.random() < 0.7 else ()
        if rng.random() < 0.05:
            flags += ("\\Flagged",)
        yield folder, MessageSpec(data, date, flags, (), msgid, subject,
                                  "bench")


class PipelinedAppender:
    """Raw-socket IMAP client that pipelines APPEND with LITERAL+.

    Much faster than imaplib (which waits for "+" per message)."""

    def __init__(self, host, port, user, password, window=64):
        self.sock = socket.create_connection((host, port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        self.window = window
        greeting = self.f.readline()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError("bad greeting %r" % greeting)
        self._n = 0
        self._cmd(b"LOGIN " + _q(user).encode() + b" " +
                  _q(password).encode())
        self.outstanding = 0
        self.errors = []
        self.sent = 0

    def _cmd(self, line):
        self._n += 1
        tag = b"L%d" % self._n
        self.sock.sendall(tag + b" " + line + CRLF)
        while True:
            resp = self.f.readline()
            if not resp:
                raise RuntimeError("connection closed")
            if resp.startswith(tag + b" "):
                if not resp.startswith(tag + b" OK"):
                    raise RuntimeError(resp.decode(errors="replace").replace(
                        "\r\n", ""))
                return resp

    def _read_one(self):
        resp = self.f.readline()
        if not resp:
            raise RuntimeError("connection closed")
        if resp.startswith(b"A"):
            self.outstanding -= 1
            if b" OK" not in resp[:12]:
                self.errors.append(resp)

    def append(self, name, m):
        flags = (" (" + " ".join(m.flags) + ")") if m.flags else ""
        self.sent += 1
        head = ('A%d APPEND %s%s "%s" {%d+}\r\n' % (
            self.sent, _q(name), flags, imap_date(m.internaldate),
            len(m.data))).encode()
        self.sock.sendall(head + m.data + CRLF)
        self.outstanding += 1
        while self.outstanding >= self.window:
            self._read_one()

    def finish(self):
        while self.outstanding > 0:
            self._read_one()
        self._cmd(b"LOGOUT")
        self.sock.close()
        if self.errors:
            raise RuntimeError("APPEND errors: %r" % self.errors[:5])


_FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R",
                 "\\Seen": "S", "\\Deleted": "T"}


def write_maildir(dv, folder_name, msgs, start_seq=0, user=None):
    """Write messages as maildir files into cur/ of an existing mailbox.

    mtime = INTERNALDATE, flags in the ":2," suffix (system flags only),
    file names sorted in load order so Dovecot assigns UIDs in order.
    Files are owned by the dovecot user. Returns number written.
    """
    d = os.path.join(dv.maildir_path(folder_name, user), "cur")
    os.makedirs(d, exist_ok=True)
    uid, gid = dv.mail_uid, dv.mail_gid
    n = start_seq
    for m in msgs:
        n += 1
        letters = "".join(sorted(_FLAG_LETTERS[f] for f in m.flags
                                 if f in _FLAG_LETTERS))
        ts = int(m.internaldate.timestamp())
        # S= physical size, W= RFC822.SIZE (file has CRLF already), so
        # Dovecot need not read the file to answer RFC822.SIZE.
        fn = "%010d.M%06dP1Q%d.imapfuse-bench,S=%d,W=%d:2,%s" % (
            1_000_000_000 + n, n % 1_000_000, n, len(m.data), len(m.data),
            letters)
        p = os.path.join(d, fn)
        with open(p, "wb") as f:
            f.write(m.data)
        os.chown(p, uid, gid)
        os.utime(p, (ts, ts))
    return n - start_seq


def load_bench_corpus(dv, n=10000, seed=2, method="pipelined",
                      folders=BENCH_FOLDERS, verify=True):
    """Load the benchmark corpus. method: "append" (imaplib), "pipelined"
    (LITERAL+), or "maildir" (write files, then Dovecot indexes them).

    Returns a dict: messages, bytes, load_seconds, index_seconds,
    per_folder counts, and (if verify) the server-side counts/bytes.
    """
    conn = dv.imap()
    delim = _delimiter(conn)
    spec = CorpusSpec(seed)
    for f in folders:
        spec.folders[f] = []
    create_folders(conn, spec, delim)
    names = {f: to_imap_name(f, delim) for f in folders}
    t0 = time.monotonic()
    count = 0
    nbytes = 0
    per = {f: 0 for f in folders}
    index_seconds = 0.0
    if method == "append":
        for folder, m in generate_bench_corpus(n, seed, folders):
            _append(conn, names[folder], m)
            count += 1
            nbytes += len(m.data)
            per[folder] += 1
    elif method == "pipelined":
        ap = PipelinedAppender(dv.host, dv.port, dv.user, dv.password)
        for folder, m in generate_bench_corpus(n, seed, folders):
            ap.append(names[folder], m)
            count += 1
            nbytes += len(m.data)
            per[folder] += 1
        ap.finish()
    elif method == "maildir":
        seq = 0
        for folder, m in generate_bench_corpus(n, seed, folders):
            seq += write_maildir(dv, names[folder], [m], start_seq=seq)
            count += 1
            nbytes += len(m.data)
            per[folder] += 1
        t1 = time.monotonic()
        for f in folders:
            # EXAMINE makes Dovecot sync the maildir (assign UIDs); the
            # listing FETCH fills its cache like an APPEND would have.
            typ, data = conn.select(_q(names[f]), readonly=True)
            if typ != "OK":
                raise RuntimeError("EXAMINE %s: %s" % (f, data))
            if int(data[0]):
                typ, data = conn.uid("FETCH", "1:*",
                                     "(UID RFC822.SIZE INTERNALDATE FLAGS)")
                if typ != "OK":
                    raise RuntimeError("FETCH %s: %s" % (f, data))
            conn.close()
        index_seconds = time.monotonic() - t1
    else:
        raise ValueError(method)
    load_seconds = time.monotonic() - t0
    res = {"messages": count, "bytes": nbytes, "load_seconds": load_seconds,
           "index_seconds": index_seconds, "per_folder": per,
           "method": method, "imap_names": names}
    if verify:
        srv_n = 0
        srv_b = 0
        for f in folders:
            typ, data = conn.status(_q(names[f]), "(MESSAGES SIZE)")
            m = re.search(rb"MESSAGES (\d+) SIZE (\d+)", data[0])
            srv_n += int(m.group(1))
            srv_b += int(m.group(2))
            if int(m.group(1)) != per[f]:
                raise RuntimeError("%s: server has %s messages, wrote %d" % (
                    f, m.group(1), per[f]))
        res["server_messages"] = srv_n
        res["server_bytes"] = srv_b
        if srv_b != nbytes:
            raise RuntimeError("server SIZE %d != bytes loaded %d" % (
                srv_b, nbytes))
    conn.logout()
    return res
