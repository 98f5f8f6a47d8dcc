"""A chat-completions server on loopback for the LLM backend's tests: a real HTTP server speaking
the OpenAI/DeepSeek protocol, whose answers the test scripts (a JSON reply, garbage, a refusal,
an error status, a delay longer than the client's timeout)."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatServer:
    """``script(...)`` queues replies; each POST to /chat/completions takes the next (the last one
    repeats). ``requests`` holds what the client sent (headers and JSON body)."""

    def __init__(self) -> None:
        self.replies: deque[dict[str, Any]] = deque()
        self.last: dict[str, Any] = {"content": "{}"}
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                reply = server.replies.popleft() if server.replies else server.last
                server.last = reply
                if reply.get("delay_s"):
                    time.sleep(reply["delay_s"])
                status = reply.get("status", 200)
                if "raw" in reply:
                    payload = reply["raw"].encode()
                elif status != 200:
                    payload = json.dumps({"error": {"message": reply.get("error", "server error")}}).encode()
                else:
                    message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
                    if "refusal" in reply:
                        message["refusal"] = reply["refusal"]
                    payload = json.dumps(
                        {
                            "id": "chatcmpl-test",
                            "object": "chat.completion",
                            "model": body.get("model"),
                            "choices": [
                                {"index": 0, "message": message, "finish_reason": reply.get("finish_reason", "stop")}
                            ],
                        }
                    ).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def script(self, *replies: dict[str, Any]) -> None:
        self.replies.extend(replies)

    def answer(self, obj: Any) -> dict[str, Any]:
        return {"content": json.dumps(obj, ensure_ascii=False)}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
