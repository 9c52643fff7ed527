#!/usr/bin/env python3
"""Server CPU per single-message ByteStream Write: how Bazel uploads each action's Action,
Command and Directory messages (about six small uploads per remote action).

Writes N distinct blobs of 400-odd bytes, each in one WriteRequest with finish_write, 8 in
flight, after 50 unrecorded ones, and prints the CPU the server process spent per write
(from /proc/PID/stat, so run it on the server's host). Needs grpcio, which the BuildStream 2
virtualenv that .ci/run installs has:

    /opt/bst2/bin/python3 scripts/small-writes.py 127.0.0.1:8980 "$(pgrep -x rexd)" 3000
"""
import concurrent.futures
import hashlib
import os
import sys

import grpc
from buildstream._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc


def server_cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    target, pid, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    stub = bytestream_pb2_grpc.ByteStreamStub(grpc.insecure_channel(target))
    salt = os.urandom(8).hex()

    def write(i):
        data = f"{salt}-{i}-".encode() * 20
        name = f"uploads/{salt}-{i}/blobs/{hashlib.sha256(data).hexdigest()}/{len(data)}"
        request = bytestream_pb2.WriteRequest(
            resource_name=name, write_offset=0, finish_write=True, data=data
        )
        reply = stub.Write(iter([request]))
        assert reply.committed_size == len(data), reply

    for i in range(50):
        write(-1 - i)
    before = server_cpu(pid)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(count)))
    spent = server_cpu(pid) - before
    print(f"{spent * 1e6 / count:.0f} us of server CPU per single-message write ({count} writes)")


if __name__ == "__main__":
    main()
