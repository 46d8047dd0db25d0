#!/usr/bin/env python3
"""Benchmark corpus for mailhaul: load a deterministic corpus into an IMAP server, or count
what a mailbox holds.

  load_corpus.py load  --port P --ca CA --user U --messages N [--seed S] [--multiappend N]
                       [--folder F]
  load_corpus.py count --port P --ca CA --user U

The password is read from the environment variable named by --password-env (default
BENCH_PASS), never from the command line, so it does not show up in `ps`.

The corpus (same --messages and --seed give the same bytes):
  * 85% plain text messages of 2-20 KB (uniform);
  * 15% multipart messages with a base64 attachment of 50 KB-2 MB (decoded), drawn
    log-uniformly with a bias towards small ones (40 ** (u ** 1.3)), which puts 5,000
    messages at about 450 MB, the size of the corpus peers were measured on (FACTS.md);
  * spread over INBOX (60%), "Archive/2019" (25%) and "Sent Items" (15%), or all in --folder;
  * flags \\Seen (80%), \\Answered (20%), \\Flagged (5%), keyword $Important (3%);
  * INTERNALDATEs spread over 2012-2024.

Loading uses pipelined APPENDs with LITERAL+ (Dovecot has it): one connection, batches of
up to 50 messages / 8 MB in flight, so 5,000 messages load in well under a minute. One
connection on purpose: concurrent appends to one Dovecot user can trip its index lock.

Only the standard library (ssl, socket, imaplib): runs on any python3 >= 3.9.
"""

import argparse
import datetime
import imaplib
import json
import os
import random
import re
import socket
import ssl
import sys
import time

FOLDERS = [("INBOX", 0.60), ("Archive/2019", 0.25), ("Sent Items", 0.15)]
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when "
    "what more if no out so said up into than them can only other new some could time "
    "these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world "
    "still own see men work long get here between both life being under never day same "
    "another know while last might us great old year off come since against go came right "
    "used take three invoice meeting project budget report quarter deadline schedule "
    "review migration mailbox server folder message attachment draft contract"
).split()


def quote(text):
    """An IMAP quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ssl_context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


def password(args):
    value = os.environ.get(args.password_env, "")
    if not value:
        sys.exit(f"load_corpus.py: set the password in the environment variable {args.password_env}")
    return value


# --------------------------------------------------------------------------- corpus


def text_body(rng, size):
    """About `size` bytes of CRLF text lines."""
    out = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(WORDS, k=12)).capitalize() + ".\r\n"
        out.append(line)
        total += len(line)
    return "".join(out)


def message(seed, i):
    """Message i of the corpus: (folder, flags, internaldate, bytes)."""
    rng = random.Random(f"mailhaul-bench-{seed}-{i}")
    x = rng.random()
    folder = FOLDERS[-1][0]
    acc = 0.0
    for name, share in FOLDERS:
        acc += share
        if x < acc:
            folder = name
            break
    flags = []
    if rng.random() < 0.80:
        flags.append("\\Seen")
    if rng.random() < 0.20:
        flags.append("\\Answered")
    if rng.random() < 0.05:
        flags.append("\\Flagged")
    if rng.random() < 0.03:
        flags.append("$Important")
    base = datetime.datetime(2012, 1, 1, tzinfo=datetime.timezone.utc)
    date = base + datetime.timedelta(minutes=rng.randrange(0, 13 * 365 * 24 * 60))
    attachment = None
    if rng.random() < 0.15:
        attachment = int(50_000 * 40 ** (rng.random() ** 1.3))
        text_size = rng.randint(1000, 4000)
    else:
        text_size = rng.randint(2000, 20000) - 400  # headers are ~400 bytes
    sender = rng.randrange(50)
    head = (
        f"Message-ID: <bench.{seed}.{i}@corpus.mailhaul.test>\r\n"
        f"Date: {date.strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n"
        f"From: Sender {sender} <sender{sender}@example.org>\r\n"
        "To: Recipient <recipient@example.com>\r\n"
        f"Subject: Benchmark message {i} ({folder})\r\n"
        "MIME-Version: 1.0\r\n"
    )
    text = text_body(rng, text_size)
    if attachment is None:
        body = "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n" + text
        raw = (head + body).encode()
    else:
        import base64

        boundary = f"=_bench_{seed}_{i}"
        data = base64.encodebytes(rng.randbytes(attachment)).replace(b"\n", b"\r\n")
        raw = (
            head
            + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
            + "This is a multi-part message in MIME format.\r\n"
            + f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            + "Content-Transfer-Encoding: 7bit\r\n\r\n"
            + text
            + f"--{boundary}\r\nContent-Type: application/octet-stream; name=\"data{i}.bin\"\r\n"
            + f"Content-Disposition: attachment; filename=\"data{i}.bin\"\r\n"
            + "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode() + data + f"--{boundary}--\r\n".encode()
    return folder, flags, date.strftime("%d-%b-%Y %H:%M:%S +0000"), raw


# --------------------------------------------------------------------------- raw IMAP


class Conn:
    """A minimal IMAPS client for pipelined APPEND (imaplib has no LITERAL+)."""

    def __init__(self, host, port, ca):
        raw = socket.create_connection((host, port), timeout=120)
        self.sock = ssl_context(ca).wrap_socket(raw, server_hostname=host)
        self.reader = self.sock.makefile("rb")
        self.tag = 0
        greeting = self.reader.readline()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"unexpected greeting {greeting!r}")

    def next_tag(self):
        self.tag += 1
        return f"L{self.tag}"

    def wait(self, tags):
        """Read until every tag in `tags` completed; return {tag: (status, line)}."""
        pending = set(tags)
        done = {}
        while pending:
            line = self.reader.readline()
            if not line:
                raise RuntimeError("connection closed by the server")
            parts = line.split(b" ", 2)
            tag = parts[0].decode(errors="replace")
            if tag in pending:
                pending.discard(tag)
                done[tag] = (parts[1].decode(errors="replace") if len(parts) > 1 else "", line.decode(errors="replace").strip())
        return done

    def simple(self, command):
        tag = self.next_tag()
        self.sock.sendall(f"{tag} {command}\r\n".encode())
        return self.wait([tag])[tag]


def login(args):
    conn = Conn(args.host, args.port, args.ca)
    status, line = conn.simple(f"LOGIN {quote(args.user)} {quote(password(args))}")
    if status != "OK":
        sys.exit(f"load_corpus.py: login as {args.user} failed: {line}")
    return conn


def send_single(conn, corpus):
    """Pipelined single APPENDs (LITERAL+), up to 50 messages / 8 MB in flight."""
    batch, batch_bytes, chunks = [], 0, []

    def flush():
        nonlocal batch, batch_bytes, chunks
        if not batch:
            return
        conn.sock.sendall(b"".join(chunks))
        for tag, (status, line) in conn.wait(batch).items():
            if status != "OK":
                sys.exit(f"load_corpus.py: APPEND failed: {line}")
        batch, batch_bytes, chunks = [], 0, []

    for i, (folder, flags, date, raw) in enumerate(corpus):
        tag = conn.next_tag()
        chunks.append(
            f"{tag} APPEND {quote(folder)} ({' '.join(flags)}) \"{date}\" {{{len(raw)}+}}\r\n".encode()
            + raw
            + b"\r\n"
        )
        batch.append(tag)
        batch_bytes += len(raw)
        if len(batch) >= 50 or batch_bytes >= 8 << 20:
            flush()
        if (i + 1) % 1000 == 0:
            print(f"load_corpus.py: {i + 1}/{len(corpus)} messages", file=sys.stderr, flush=True)
    flush()


def send_multi(conn, corpus, most):
    """MULTIAPPEND (RFC 3502): consecutive messages of one folder, up to `most` a command or
    32 MB, one command (one server transaction) each, waited for in turn."""
    i = 0
    while i < len(corpus):
        folder = corpus[i][0]
        tag = conn.next_tag()
        parts = [f"{tag} APPEND {quote(folder)}".encode()]
        size = 0
        while i < len(corpus) and corpus[i][0] == folder and len(parts) <= most and size < 32 << 20:
            _, flags, date, raw = corpus[i]
            parts.append(f" ({' '.join(flags)}) \"{date}\" {{{len(raw)}+}}\r\n".encode() + raw)
            size += len(raw)
            i += 1
        conn.sock.sendall(b"".join(parts) + b"\r\n")
        status, line = conn.wait([tag])[tag]
        if status != "OK":
            sys.exit(f"load_corpus.py: MULTIAPPEND failed: {line}")


def load(args):
    """load: the corpus, generated first so only the sending is timed (`seconds`): with
    --multiappend N as MULTIAPPEND batches of up to N messages, else as pipelined single
    APPENDs. Into an empty mailbox this is the destination's ceiling for an IMAP client."""
    corpus = [message(args.seed, i) for i in range(args.messages)]
    if args.folder:
        corpus = [(args.folder, flags, date, raw) for _, flags, date, raw in corpus]
    conn = login(args)
    for name in sorted({folder for folder, _, _, _ in corpus}):
        if name != "INBOX":
            conn.simple(f"CREATE {quote(name)}")  # NO [ALREADYEXISTS] is fine
    started = time.monotonic()
    if args.multiappend:
        send_multi(conn, corpus, args.multiappend)
    else:
        send_single(conn, corpus)
    elapsed = time.monotonic() - started
    conn.simple("LOGOUT")
    per_folder = {}
    for folder, _, _, _ in corpus:
        per_folder[folder] = per_folder.get(folder, 0) + 1
    print(
        json.dumps(
            {
                "messages": args.messages,
                "bytes": sum(len(raw) for _, _, _, raw in corpus),
                "folders": per_folder,
                "seconds": round(elapsed, 2),
                "multiappend": args.multiappend,
            }
        )
    )


def load_small(args):
    """--small FOLDER: N small (~1 KB) messages into one folder, MULTIAPPEND batches of 500
    (one transaction each: single APPENDs into a big maildir folder slow down with its size)."""
    conn = login(args)
    folder = args.small
    if folder != "INBOX":
        conn.simple(f"CREATE {quote(folder)}")  # NO [ALREADYEXISTS] is fine
    started = time.monotonic()
    total_bytes = 0
    first = args.start
    while first < args.start + args.messages:
        last = min(first + 500, args.start + args.messages)
        tag = conn.next_tag()
        parts = [f"{tag} APPEND {quote(folder)}".encode()]
        for i in range(first, last):
            rng = random.Random(f"mailhaul-small-{args.seed}-{i}")
            raw = (
                f"Message-ID: <small.{args.seed}.{i}@corpus.mailhaul.test>\r\n"
                f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: a{i % 50}@example.org\r\n"
                f"To: b@example.com\r\nSubject: Small message {i}\r\n\r\n" + text_body(rng, 700)
            ).encode()
            flags = "(\\Seen)" if i % 3 else "()"
            parts.append(f" {flags} {{{len(raw)}+}}\r\n".encode() + raw)
            total_bytes += len(raw)
        command = b"".join(parts) + b"\r\n"
        for attempt in range(3):
            conn.sock.sendall(command)
            status, line = conn.wait([tag])[tag]
            if status == "OK":
                break
            # Dovecot under load can fail a transaction ([SERVERBUG]); nothing was stored.
            print(f"load_corpus.py: MULTIAPPEND refused ({line}), again", file=sys.stderr, flush=True)
            tag = conn.next_tag()
            parts[0] = f"{tag} APPEND {quote(folder)}".encode()
            command = b"".join(parts) + b"\r\n"
        if status != "OK":
            sys.exit(f"load_corpus.py: MULTIAPPEND failed: {line}")
        first = last
        if (first - args.start) % 10000 == 0:
            print(f"load_corpus.py: {first - args.start}/{args.messages} messages", file=sys.stderr, flush=True)
    conn.simple("LOGOUT")
    print(json.dumps({"messages": args.messages, "bytes": total_bytes, "seconds": round(time.monotonic() - started, 1)}))


def change_flags(args):
    """flags --small FOLDER --messages N: flag N messages spread over the folder (as a user would)."""
    conn = Conn(args.host, args.port, args.ca)
    status, line = conn.simple(f"LOGIN {quote(args.user)} {quote(password(args))}")
    if status != "OK":
        sys.exit(f"load_corpus.py: login as {args.user} failed: {line}")
    conn.simple(f"SELECT {quote(args.small)}")
    rng = random.Random(f"mailhaul-flags-{args.seed}")
    uids = sorted(rng.sample(range(1, args.start + 1), args.messages))
    status, line = conn.simple(f"UID STORE {','.join(map(str, uids))} +FLAGS.SILENT (\\Flagged)")
    if status != "OK":
        sys.exit(f"load_corpus.py: STORE failed: {line}")
    conn.simple("LOGOUT")
    print(json.dumps({"flagged": len(uids)}))


# --------------------------------------------------------------------------- count

LIST_RE = re.compile(rb'^\((?P<attrs>[^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (?P<name>.*)$')


def unquote(name):
    if name.startswith(b'"') and name.endswith(b'"'):
        name = name[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
    return name.decode()


def count(args):
    """Messages and bytes per selectable folder, as JSON on stdout (read-only: EXAMINE)."""
    imap = imaplib.IMAP4_SSL(args.host, args.port, ssl_context=ssl_context(args.ca))
    imap.login(args.user, password(args))
    typ, lines = imap.list()
    if typ != "OK":
        sys.exit(f"load_corpus.py: LIST failed: {lines}")
    folders = {}
    for item in lines:
        if isinstance(item, tuple):  # a name sent as a literal
            attrs, name = item[0], item[1].decode()
            if b"\\Noselect" in attrs or b"\\NonExistent" in attrs:
                continue
        else:
            m = LIST_RE.match(item)
            if not m:
                sys.exit(f"load_corpus.py: cannot parse LIST line {item!r}")
            if b"\\Noselect" in m["attrs"] or b"\\NonExistent" in m["attrs"]:
                continue
            name = unquote(m["name"])
        typ, data = imap.select(quote(name), readonly=True)
        if typ != "OK":
            sys.exit(f"load_corpus.py: EXAMINE {name} failed: {data}")
        n = int(data[0])
        size = 0
        if n:
            typ, data = imap.fetch("1:*", "(RFC822.SIZE)")
            for d in data:
                m = re.search(rb"RFC822\.SIZE (\d+)", d if isinstance(d, bytes) else d[0])
                if m:
                    size += int(m[1])
        folders[name] = {"messages": n, "bytes": size}
    imap.logout()
    print(
        json.dumps(
            {
                "messages": sum(f["messages"] for f in folders.values()),
                "bytes": sum(f["bytes"] for f in folders.values()),
                "folders": folders,
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["load", "count", "flags"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="IMAPS port")
    p.add_argument("--ca", required=True, help="PEM of the CA that signed the server certificate")
    p.add_argument("--user", required=True)
    p.add_argument("--password-env", default="BENCH_PASS")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--small", metavar="FOLDER", help="load: small messages into FOLDER (MULTIAPPEND); flags: the folder")
    p.add_argument("--multiappend", type=int, default=0, metavar="N",
                   help="load: MULTIAPPEND batches of up to N messages instead of single APPENDs")
    p.add_argument("--folder", help="load: the whole corpus into FOLDER instead of spreading it")
    p.add_argument("--start", type=int, default=0, help="--small: number of the first message (flags: UIDs 1..START)")
    args = p.parse_args()
    try:
        if args.command == "flags":
            change_flags(args)
        elif args.command == "load":
            load_small(args) if args.small else load(args)
        else:
            count(args)
    except (OSError, RuntimeError, imaplib.IMAP4.error) as e:
        sys.exit(f"load_corpus.py: {args.command} on 127.0.0.1:{args.port} as {args.user}: {e}")


if __name__ == "__main__":
    main()
