#!/usr/bin/env python3
"""One-shot readiness probes for deploy/local/services, using only the standard library.

    probe.py cassandra PORT   CQL native protocol v4: STARTUP, then
                              QUERY "SELECT release_version FROM system.local"
    probe.py mongo PORT       OP_MSG {ping: 1} and {buildInfo: 1} on admin
    probe.py dynamodb PORT    DynamoDB JSON API ListTables over HTTP

On success prints one answer line (e.g. "cassandra: release_version 5.0.8") and exits 0;
otherwise prints the reason on stderr and exits 1. Each probe gives up after --timeout s.
No client libraries on purpose: cqlsh/pymongo/boto3 would be one more thing to install and
pin, and a raw request proves the server really answers its own protocol.
"""
import argparse
import json
import socket
import struct
import sys
import urllib.request

HOST = "127.0.0.1"


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by server")
        buf += chunk
    return buf


# ---------------------------------------------------------------- Cassandra (CQL v4)

def cql_string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def cql_frame(stream, opcode, body):
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body


def cql_read(sock):
    version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
    body = recv_exact(sock, length)
    if opcode == 0x00:  # ERROR: [int code][string message]
        code = struct.unpack(">i", body[:4])[0]
        (mlen,) = struct.unpack(">H", body[4:6])
        raise RuntimeError("CQL error 0x%04x: %s" % (code, body[6:6 + mlen].decode(errors="replace")))
    return opcode, body


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def string(self):
        return self.take(self.short()).decode()

    def option(self):
        kind = self.short()
        if kind == 0x0000:  # custom
            self.string()
        elif kind in (0x0020, 0x0022):  # list, set
            self.option()
        elif kind == 0x0021:  # map
            self.option()
            self.option()
        elif kind in (0x0030, 0x0031):
            raise RuntimeError("UDT/tuple column types are not expected here")
        return kind


def probe_cassandra(port, timeout):
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(cql_frame(0, 0x01, struct.pack(">H", 1) + cql_string("CQL_VERSION") + cql_string("3.0.0")))
        opcode, _ = cql_read(s)
        if opcode != 0x02:  # READY (0x03 AUTHENTICATE would mean auth is on)
            raise RuntimeError("unexpected reply to STARTUP: opcode 0x%02x" % opcode)
        q = b"SELECT release_version FROM system.local"
        s.sendall(cql_frame(1, 0x07, struct.pack(">i", len(q)) + q + struct.pack(">HB", 0x0001, 0)))
        opcode, body = cql_read(s)
    r = Reader(body)
    if opcode != 0x08 or r.int() != 0x0002:  # RESULT / Rows
        raise RuntimeError("unexpected reply to QUERY")
    flags, ncols = r.int(), r.int()
    if flags & 0x0002:  # has_more_pages
        r.take(r.int())
    if not flags & 0x0004:  # metadata present
        if flags & 0x0001:  # global table spec
            r.string(), r.string()
        for _ in range(ncols):
            if not flags & 0x0001:
                r.string(), r.string()
            r.string()
            r.option()
    if r.int() < 1:
        raise RuntimeError("system.local returned no row")
    n = r.int()
    return "cassandra: release_version %s" % (r.take(n).decode() if n >= 0 else "null")


# ---------------------------------------------------------------- MongoDB wire (OP_MSG)

def bson_encode(doc):
    out = b""
    for k, v in doc.items():
        key = k.encode() + b"\x00"
        if isinstance(v, bool):
            out += b"\x08" + key + (b"\x01" if v else b"\x00")
        elif isinstance(v, int):
            out += b"\x10" + key + struct.pack("<i", v)
        elif isinstance(v, str):
            b = v.encode() + b"\x00"
            out += b"\x02" + key + struct.pack("<i", len(b)) + b
        else:
            raise TypeError(type(v))
    return struct.pack("<i", len(out) + 5) + out + b"\x00"


def bson_decode(data):
    """Decodes the top level of a BSON document; nested values are decoded or skipped."""
    doc, pos, end = {}, 4, struct.unpack("<i", data[:4])[0] - 1
    while pos < end:
        t = data[pos]
        kend = data.index(b"\x00", pos + 1)
        key = data[pos + 1:kend].decode()
        pos = kend + 1
        if t == 0x01:
            v, pos = struct.unpack("<d", data[pos:pos + 8])[0], pos + 8
        elif t in (0x02, 0x0D, 0x0E):
            n = struct.unpack("<i", data[pos:pos + 4])[0]
            v, pos = data[pos + 4:pos + 3 + n].decode(errors="replace"), pos + 4 + n
        elif t in (0x03, 0x04):
            n = struct.unpack("<i", data[pos:pos + 4])[0]
            v, pos = bson_decode(data[pos:pos + n]), pos + n
            if t == 0x04:
                v = list(v.values())
        elif t == 0x05:
            n = struct.unpack("<i", data[pos:pos + 4])[0]
            v, pos = data[pos + 5:pos + 5 + n], pos + 5 + n
        elif t == 0x07:
            v, pos = data[pos:pos + 12].hex(), pos + 12
        elif t == 0x08:
            v, pos = data[pos] == 1, pos + 1
        elif t in (0x09, 0x11, 0x12):
            v, pos = struct.unpack("<q", data[pos:pos + 8])[0], pos + 8
        elif t in (0x0A, 0x06, 0xFF, 0x7F):
            v = None
        elif t == 0x10:
            v, pos = struct.unpack("<i", data[pos:pos + 4])[0], pos + 4
        elif t == 0x13:
            v, pos = data[pos:pos + 16], pos + 16
        else:
            raise RuntimeError("unsupported BSON type 0x%02x" % t)
        doc[key] = v
    return doc


def mongo_command(sock, request_id, cmd):
    body = struct.pack("<I", 0) + b"\x00" + bson_encode(cmd)
    sock.sendall(struct.pack("<iiii", 16 + len(body), request_id, 0, 2013) + body)
    length, _rid, _to, opcode = struct.unpack("<iiii", recv_exact(sock, 16))
    payload = recv_exact(sock, length - 16)
    if opcode != 2013 or payload[4] != 0:
        raise RuntimeError("unexpected reply opcode %d" % opcode)
    reply = bson_decode(payload[5:])
    if reply.get("ok") != 1:
        raise RuntimeError("%s failed: %s" % (next(iter(cmd)), reply.get("errmsg", reply)))
    return reply


def probe_mongo(port, timeout):
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        mongo_command(s, 1, {"ping": 1, "$db": "admin"})
        info = mongo_command(s, 2, {"buildInfo": 1, "$db": "admin"})
    extra = ", FerretDB" if "ferretdbVersion" in info else ""
    return "mongo: ping ok (buildInfo version %s%s)" % (info.get("version", "?"), extra)


# ---------------------------------------------------------------- DynamoDB Local

def probe_dynamodb(port, timeout):
    req = urllib.request.Request(
        "http://%s:%d/" % (HOST, port),
        data=b"{}",
        method="POST",
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "DynamoDB_20120810.ListTables",
            "X-Amz-Date": "20250101T000000Z",
            # DynamoDB Local does not check signatures, but wants a well-formed header whose
            # access key id is letters and digits only.
            "Authorization": "AWS4-HMAC-SHA256 Credential=local/20250101/us-east-1/dynamodb/aws4_request, "
                             "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=00",
        },
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply = json.loads(resp.read())
    if "TableNames" not in reply:
        raise RuntimeError("unexpected ListTables reply: %s" % reply)
    return "dynamodb: ListTables ok (%d tables)" % len(reply["TableNames"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("service", choices=["cassandra", "mongo", "dynamodb"])
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=3.0)
    a = p.parse_args()
    fn = {"cassandra": probe_cassandra, "mongo": probe_mongo, "dynamodb": probe_dynamodb}[a.service]
    try:
        print(fn(a.port, a.timeout))
    except Exception as e:  # noqa: BLE001 - any failure means "not answering yet"
        print("%s: %s: %s" % (a.service, type(e).__name__, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
