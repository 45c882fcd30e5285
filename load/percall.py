#!/usr/bin/env python3
"""Sends N requests one at a time over one keep-alive connection and reads each reply whole.

The fixed workload behind load/percall.sh (per-request cost: instruction counts under
callgrind, context switches and CPU under perf stat). Usage:

    percall.py HOST:PORT TOKEN N stream|whole [MODEL]

Exits non-zero when a reply is not 200 or a stream does not end with [DONE].
"""

import http.client
import json
import sys


def main() -> int:
    addr, token, n, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model = sys.argv[5] if len(sys.argv) > 5 else "mock-gpt"
    host, port = addr.rsplit(":", 1)
    stream = kind == "stream"
    # Unique per run against one gateway (percall.sh's warm-up and measured runs differ in N).
    run = f"{kind}{n}"

    def body(i: int) -> bytes:
        # The system prompt repeats (as a chat's does); the user's question is new each time
        # (never seen by the gateway before, in this run or another of another kind or N).
        return json.dumps(
            {
                "model": model,
                "stream": stream,
                "max_tokens": 20,
                "messages": [
                    {"role": "system", "content": "You are a helpful support assistant."},
                    {"role": "user", "content": f"hello there, how do I reset my password? ({run}-{i})"},
                ],
            }
        ).encode()

    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "X-Session-Id": "percall",
    }
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    for i in range(n):
        conn.request("POST", "/v1/chat/completions", body=body(i), headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            print(f"request {i}: {reply.status} {data[:300]!r}", file=sys.stderr)
            return 1
        if stream and b"data: [DONE]" not in data:
            print(f"request {i}: stream without [DONE]: {data[-300:]!r}", file=sys.stderr)
            return 1
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
