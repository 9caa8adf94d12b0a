#!/usr/bin/env python3
"""Open N keep-alive connections to 127.0.0.1:PORT, make one request on each (so the
server has really taken the connection, past accept and any hand-over), then hold them
all idle until killed or HOLD_SECONDS pass. Prints "held N" once they are all up.

    hold.py PORT HOST N [HOLD_SECONDS]
"""
import resource
import socket
import sys
import time


def main():
    port, host, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    hold = float(sys.argv[4]) if len(sys.argv) > 4 else 600.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < count + 100:
        sys.exit(f"need {count + 100} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, hard))
    request = f"GET /small.txt HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    held, failed = [], 0
    deadline = time.monotonic() + 120
    for _ in range(count):
        if time.monotonic() > deadline:
            sys.exit(f"opening connections took over 120 s ({len(held)} open)")
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(request)
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed before answering")
                reply += chunk
            if not reply.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(reply.split(b"\r\n", 1)[0].decode(errors="replace"))
            held.append(s)
        except OSError as e:
            failed += 1
            if failed > count // 100:
                sys.exit(f"too many failed connections ({failed}; last: {e})")
    print(f"held {len(held)} failed {failed}", flush=True)
    # Stay until killed (the sockets close with the process) or the time is up.
    time.sleep(hold)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
