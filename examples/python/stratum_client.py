#!/usr/bin/env python3
"""A minimal Python Stratum client (the published example, unchanged), plus a main that uses it against a proxy.

    python3 examples/python/stratum_client.py 127.0.0.1 3333 alice.rig1
"""
import json
import socket
import asyncio
import sys


class StratumClient:
    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self.socket = None
        self.next_id = 1

    async def connect(self):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.connect((self.host, self.port))

    async def subscribe(self, user_agent: str = "python-client/1.0"):
        request = {
            "id": self.next_id,
            "method": "mining.subscribe",
            "params": [user_agent]
        }
        return await self._send_request(request)

    async def authorize(self, username: str, password: str = ""):
        request = {
            "id": self.next_id,
            "method": "mining.authorize",
            "params": [username, password]
        }
        return await self._send_request(request)

    async def submit(self, worker_name: str, job_id: str, extranonce2: str,
                    ntime: str, nonce: str):
        request = {
            "id": self.next_id,
            "method": "mining.submit",
            "params": [worker_name, job_id, extranonce2, ntime, nonce]
        }
        return await self._send_request(request)

    async def _send_request(self, request):
        message = json.dumps(request) + "\n"
        self.socket.send(message.encode())

        response = self.socket.recv(4096).decode().strip()
        self.next_id += 1

        return json.loads(response)


async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    worker = sys.argv[3] if len(sys.argv) > 3 else "python.example"
    client = StratumClient(host, port)
    await client.connect()
    sub = await client.subscribe()
    auth = await client.authorize(worker, "x")
    print(json.dumps({"subscribe": sub, "authorize": auth}))
    return 0 if auth.get("result") is True and sub.get("error") is None else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
