#!/usr/bin/env python3
"""Reads back what the smoke test's ingestd container wrote, with the standard library only.

    verify_stores.py --prefix P --count N --mongo-db D --cassandra-keyspace K --dynamodb-table T
                     [--cleanup]

Expects the events `P-0` .. `P-(N-1)` in each store (the ids `ingestd publish --id-prefix P`
gives) and prints one line per store: how many it holds, which are missing. Exits 1 if any
store lacks any event. The stores are the ones the shipped pipeline writes, under names
unique to one run:
  MongoDB   D.events                 (_id = event_id)
  Cassandra K.events_by_day          (event_id column)
  DynamoDB  table T                  (event_id attribute)
--cleanup then drops the database, the keyspace and the table (also when events are missing).
Raw wire protocols (reusing deploy/local/probe.py) so nothing needs installing or pinning.
"""
import argparse
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "local"))
import probe  # noqa: E402  (deploy/local/probe.py: CQL frames, BSON decoding)

HOST = "127.0.0.1"


# ---------------------------------------------------------------- MongoDB (OP_MSG)

def bson_encode(doc):
    """BSON for the few value types the commands below use (nested documents included)."""
    out = b""
    for key, value in doc.items():
        name = key.encode() + b"\x00"
        if isinstance(value, bool):
            out += b"\x08" + name + (b"\x01" if value else b"\x00")
        elif isinstance(value, int):
            out += b"\x10" + name + struct.pack("<i", value)
        elif isinstance(value, str):
            data = value.encode() + b"\x00"
            out += b"\x02" + name + struct.pack("<i", len(data)) + data
        elif isinstance(value, dict):
            out += b"\x03" + name + bson_encode(value)
        else:
            raise TypeError("unsupported BSON value %r" % (value,))
    return struct.pack("<i", len(out) + 5) + out + b"\x00"


def mongo_command(sock, request_id, command):
    body = struct.pack("<I", 0) + b"\x00" + bson_encode(command)
    sock.sendall(struct.pack("<iiii", 16 + len(body), request_id, 0, 2013) + body)
    length, _request, _response_to, opcode = struct.unpack("<iiii", probe.recv_exact(sock, 16))
    payload = probe.recv_exact(sock, length - 16)
    if opcode != 2013 or payload[4] != 0:
        raise RuntimeError("mongo: unexpected reply opcode %d" % opcode)
    reply = probe.bson_decode(payload[5:])
    if reply.get("ok") != 1:
        raise RuntimeError("mongo: %s failed: %s" % (next(iter(command)), reply.get("errmsg", reply)))
    return reply


def mongo_ids(port, database, collection):
    with socket.create_connection((HOST, port), timeout=10) as sock:
        reply = mongo_command(sock, 1, {
            "find": collection, "filter": {}, "projection": {"_id": 1},
            "batchSize": 100000, "$db": database,
        })
    cursor = reply["cursor"]
    if cursor.get("id"):
        # One batch is plenty for a smoke test; getMore would need an int64 cursor id.
        raise RuntimeError("mongo: more documents than one batch, not expected in a smoke test")
    return {doc["_id"] for doc in cursor.get("firstBatch", [])}


def mongo_drop(port, database):
    with socket.create_connection((HOST, port), timeout=10) as sock:
        mongo_command(sock, 1, {"dropDatabase": 1, "$db": database})


# ---------------------------------------------------------------- Cassandra (CQL v4)

def cql_connect(port):
    sock = socket.create_connection((HOST, port), timeout=20)
    sock.sendall(probe.cql_frame(0, 0x01, struct.pack(">H", 1) + probe.cql_string("CQL_VERSION")
                                 + probe.cql_string("3.0.0")))
    opcode, _ = probe.cql_read(sock)
    if opcode != 0x02:
        raise RuntimeError("cassandra: unexpected reply to STARTUP: opcode 0x%02x" % opcode)
    return sock


def cql_query(sock, stream, query, paging_state=None):
    """One QUERY at consistency ONE, 5000 rows a page; returns (rows, paging_state)."""
    text = query.encode()
    flags = 0x04 | (0x08 if paging_state is not None else 0)
    body = struct.pack(">i", len(text)) + text + struct.pack(">HB", 0x0001, flags) + struct.pack(">i", 5000)
    if paging_state is not None:
        body += struct.pack(">i", len(paging_state)) + paging_state
    sock.sendall(probe.cql_frame(stream, 0x07, body))
    opcode, body = probe.cql_read(sock)
    reader = probe.Reader(body)
    if opcode != 0x08:
        raise RuntimeError("cassandra: unexpected reply opcode 0x%02x" % opcode)
    kind = reader.int()
    if kind != 0x0002:  # Void, SetKeyspace, SchemaChange: no rows
        return [], None
    flags, columns = reader.int(), reader.int()
    next_page = None
    if flags & 0x0002:
        next_page = reader.take(reader.int())
    if not flags & 0x0004:
        if flags & 0x0001:
            reader.string(), reader.string()
        for _ in range(columns):
            if not flags & 0x0001:
                reader.string(), reader.string()
            reader.string()
            reader.option()
    rows = []
    for _ in range(reader.int()):
        row = []
        for _ in range(columns):
            size = reader.int()
            row.append(reader.take(size) if size >= 0 else None)
        rows.append(row)
    return rows, next_page


def cassandra_ids(port, keyspace, table):
    ids, paging, stream = set(), None, 1
    with cql_connect(port) as sock:
        while True:
            rows, paging = cql_query(sock, stream, 'SELECT event_id FROM "%s"."%s"' % (keyspace, table), paging)
            ids.update(row[0].decode() for row in rows)
            stream += 1
            if paging is None:
                return ids


def cassandra_drop(port, keyspace):
    with cql_connect(port) as sock:
        cql_query(sock, 1, 'DROP KEYSPACE IF EXISTS "%s"' % keyspace)


# ---------------------------------------------------------------- DynamoDB (JSON API)

def dynamodb_call(port, action, payload):
    request = urllib.request.Request(
        "http://%s:%d/" % (HOST, port),
        data=json.dumps(payload).encode(),
        method="POST",
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "DynamoDB_20120810." + action,
            "X-Amz-Date": "20250101T000000Z",
            # DynamoDB Local checks the header's shape, not the signature.
            "Authorization": "AWS4-HMAC-SHA256 Credential=local/20250101/us-east-1/dynamodb/aws4_request, "
                             "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=00",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        # DynamoDB explains a 400 in the body: {"__type": "...#ResourceNotFoundException", ...}
        raise RuntimeError("dynamodb %s: HTTP %d: %s" % (action, error.code, error.read().decode(errors="replace")))


def dynamodb_ids(port, table):
    ids, start = set(), None
    while True:
        payload = {"TableName": table, "ProjectionExpression": "event_id"}
        if start:
            payload["ExclusiveStartKey"] = start
        reply = dynamodb_call(port, "Scan", payload)
        ids.update(item["event_id"]["S"] for item in reply.get("Items", []))
        start = reply.get("LastEvaluatedKey")
        if not start:
            return ids


def dynamodb_drop(port, table):
    try:
        dynamodb_call(port, "DeleteTable", {"TableName": table})
    except RuntimeError as error:
        if "ResourceNotFoundException" not in str(error):
            raise


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--mongo-db", required=True)
    parser.add_argument("--cassandra-keyspace", required=True)
    parser.add_argument("--dynamodb-table", required=True)
    parser.add_argument("--mongo-port", type=int, default=int(os.environ.get("INGESTD_MONGO_PORT", 27017)))
    parser.add_argument("--cassandra-port", type=int, default=int(os.environ.get("INGESTD_CASSANDRA_PORT", 9042)))
    parser.add_argument("--dynamodb-port", type=int, default=int(os.environ.get("INGESTD_DYNAMODB_PORT", 8000)))
    parser.add_argument("--cleanup", action="store_true")
    args = parser.parse_args()

    expected = {"%s-%d" % (args.prefix, n) for n in range(args.count)}
    readers = [
        ("mongodb", "%s.events" % args.mongo_db, lambda: mongo_ids(args.mongo_port, args.mongo_db, "events")),
        ("cassandra", "%s.events_by_day" % args.cassandra_keyspace,
         lambda: cassandra_ids(args.cassandra_port, args.cassandra_keyspace, "events_by_day")),
        ("dynamodb", "table %s" % args.dynamodb_table, lambda: dynamodb_ids(args.dynamodb_port, args.dynamodb_table)),
    ]
    failed = False
    for store, where, read in readers:
        started = time.monotonic()
        try:
            found = read() & expected
        except Exception as error:  # noqa: BLE001 - report every store, then fail
            print("%-9s %s: cannot read: %s: %s" % (store, where, type(error).__name__, error))
            failed = True
            continue
        missing = sorted(expected - found)
        status = "ok" if not missing else "MISSING %d (e.g. %s)" % (len(missing), ", ".join(missing[:3]))
        print("%-9s %s: %d/%d events  %s  (%.2fs)" % (store, where, len(found), len(expected), status,
                                                     time.monotonic() - started))
        failed = failed or bool(missing)

    if args.cleanup:
        for name, drop in [
            ("mongodb", lambda: mongo_drop(args.mongo_port, args.mongo_db)),
            ("cassandra", lambda: cassandra_drop(args.cassandra_port, args.cassandra_keyspace)),
            ("dynamodb", lambda: dynamodb_drop(args.dynamodb_port, args.dynamodb_table)),
        ]:
            try:
                drop()
            except Exception as error:  # noqa: BLE001 - cleanup is best effort
                print("%-9s cleanup failed: %s: %s" % (name, type(error).__name__, error))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
