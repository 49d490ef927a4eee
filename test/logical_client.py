#!/usr/bin/python3
"""test/logical_client.py: a logical replication client, as Debezium's
PostgreSQL connector is one, for the logical kind's TAP test.

    logical_client.py CONNINFO SLOT PUBLICATION [--count N]
                      [--no-confirm-last] [--timeout SECONDS]

It streams SLOT (a pgoutput slot) with proto_version '1', the publication
and messages 'true', and decodes pgoutput's records itself: Begin, Commit
and logical decoding Messages; relation and row records are skipped.  It
prints, flushed at once:

    ready                               streaming has started
    message XID PREFIX CONTENT          per message, at its transaction's commit
    commit XID END_LSN N                per transaction with N messages
    confirmed LSN                       the last flush position it confirmed

After each commit it confirms (flush feedback) the commit's end LSN, so a
restart resumes after it.  It exits 0 after --count messages (at the end
of the transaction that reached it), not confirming that last transaction
under --no-confirm-last; it exits 1 when --timeout seconds pass first.
"""
import argparse
import select
import struct
import sys
import time

import psycopg2
import psycopg2.extras


def lsn_text(lsn):
    return "%X/%X" % (lsn >> 32, lsn & 0xFFFFFFFF)


def cstring(buf, pos):
    """A null-terminated string of buf at pos, and the position after it."""
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode(), end + 1


class Decoder:
    """pgoutput protocol version 1: the records this client needs."""

    def __init__(self):
        self.xid = None
        self.messages = []

    def record(self, buf):
        """Decode one record; a finished transaction as (xid, end_lsn,
        messages), else None."""
        kind = buf[0:1]
        if kind == b"B":
            # Int64 final LSN, Int64 commit time, Int32 xid
            _final, _ts, self.xid = struct.unpack_from(">QqI", buf, 1)
            self.messages = []
        elif kind == b"M":
            # Int8 flags (1: transactional), Int64 LSN, String prefix,
            # Int32 length, Byte(n) content.  No xid: protocol 1 does
            # not stream transactions in progress.
            flags, _lsn = struct.unpack_from(">BQ", buf, 1)
            prefix, pos = cstring(buf, 10)
            (length,) = struct.unpack_from(">I", buf, pos)
            content = buf[pos + 4:pos + 4 + length].decode()
            if flags & 1:
                self.messages.append((prefix, content))
            else:
                return (0, None, [(prefix, content)])
        elif kind == b"C":
            # Int8 flags, Int64 commit LSN, Int64 end LSN, Int64 commit time
            _flags, _commit, end, _ts = struct.unpack_from(">BQQq", buf, 1)
            done = (self.xid, end, self.messages)
            self.xid, self.messages = None, []
            return done
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("conninfo")
    ap.add_argument("slot")
    ap.add_argument("publication")
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--no-confirm-last", action="store_true")
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()

    conn = psycopg2.connect(args.conninfo,
                            connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    cur.start_replication(slot_name=args.slot, decode=False, status_interval=1,
                          options={"proto_version": "1",
                                   "publication_names": args.publication,
                                   "messages": "true"})
    print("ready", flush=True)

    decoder = Decoder()
    received = 0
    confirmed = None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        msg = cur.read_message()
        if msg is None:
            select.select([cur], [], [], 0.2)
            continue
        done = decoder.record(bytes(msg.payload))
        if done is None:
            continue
        xid, end, messages = done
        for prefix, content in messages:
            print("message %d %s %s" % (xid, prefix, content), flush=True)
        if end is None:
            continue
        received += len(messages)
        print("commit %d %s %d" % (xid, lsn_text(end), len(messages)), flush=True)
        last = args.count and received >= args.count
        if not (last and args.no_confirm_last):
            cur.send_feedback(write_lsn=end, flush_lsn=end, force=True)
            confirmed = end
        if last:
            print("confirmed %s" % (lsn_text(confirmed) if confirmed else "none"), flush=True)
            conn.close()
            return 0
    print("timeout after %d messages" % received, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
