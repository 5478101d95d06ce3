"""HTTP endpoint of push updates: `GET /api/v1/sdk/stream` (server-sent events).

gunicorn's gthread worker gives every open stream a whole thread, so a process keeps at
most `FLAGSHIP_STREAM_LIMIT` streams open (503 with Retry-After beyond; the SDK polls
meanwhile), and each stream ends after about `MAX_STREAM_SECONDS` (clients reconnect).
Under gunicorn a stream notices within `CHECK_SECONDS` that its client went away (it
peeks at the socket), so a slot comes back at once; elsewhere at the next write.
"""
from __future__ import annotations

import select
import socket
import threading
from typing import Callable

from flask import Response, current_app, request
from flask.views import MethodView

from flagship.api import environment, make_blueprint, requires, runtime
from flagship.serving import changes, service

blp = make_blueprint("sdk_stream", "Push updates: server-sent events when the key's "
                                   "environment changes")
_create = threading.Lock()


@blp.route("/sdk/stream")
class SdkStream(MethodView):
    @requires("sdk")
    @blp.response(200, description="`event: revision` with data `{\"revision\", \"etag\"}` (the "
                                   "environment's snapshot ETag) at the start and on every change, "
                                   "a `: heartbeat` comment every 15 s; ends after about 5 minutes",
                  schema={"type": "string"}, content_type="text/event-stream")
    @blp.alt_response(503, description="too many open streams in this server process; poll, "
                                       "and retry after Retry-After seconds")
    def get(self) -> Response:
        """Server-sent events announcing each new snapshot of the key's environment

        Fetch `/sdk/snapshot` (with If-None-Match) when the announced ETag differs from yours."""
        return event_stream(environment(), changes.revision_message)


def event_stream(env: str, message: changes.Message) -> Response:
    """An open stream of `env` with `message` events, or a 503 when this process is full."""
    rt = runtime()
    service.snapshot(rt, env)  # an unknown environment is a 404 before the stream opens
    hub = _hub()
    if not hub.try_open():
        body = {"code": 503, "status": "Service Unavailable",
                "message": f"this server process has {hub.limit} event streams open, its limit "
                           f"(FLAGSHIP_STREAM_LIMIT); poll, or retry after "
                           f"{changes.RETRY_AFTER_SECONDS} s"}
        return current_app.response_class(
            current_app.json.dumps(body), status=503, mimetype="application/json",
            headers={"Retry-After": str(changes.RETRY_AFTER_SECONDS)})
    stream = changes.Stream(rt, hub, env, message, request.headers.get("Last-Event-ID"),
                            _peer_gone(request.environ.get("gunicorn.socket")))
    # Response.close() calls stream.close(): the slot comes back even if the body never starts
    return Response(stream, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _peer_gone(sock: socket.socket | None) -> Callable[[], bool]:
    """Whether the client closed the connection (hung up, or readable with nothing to read).

    gunicorn hands the client socket over in the environ; without it (other servers, the
    test client) a closed client is noticed at the next write, the next heartbeat at the
    latest, and holds its slot until then."""
    if sock is None:
        return lambda: False
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)

    def gone() -> bool:
        try:
            events = poller.poll(0)
            if not events:
                return False
            if events[0][1] & (select.POLLHUP | select.POLLERR):
                return True
            return sock.recv(1, socket.MSG_PEEK) == b""
        except ValueError:  # a TLS socket takes no recv flags: cannot tell
            return False
        except OSError:
            return True
    return gone


def _hub() -> changes.StreamHub:
    """This app's stream hub, made on the first stream (its watcher thread starts then)."""
    hub = current_app.extensions.get("flagship.streams")
    if hub is None:
        with _create:
            hub = current_app.extensions.get("flagship.streams")
            if hub is None:
                rt = runtime()
                hub = changes.StreamHub(rt.db.read_snapshot_revision, rt.config["STREAM_LIMIT"])
                current_app.extensions["flagship.streams"] = hub
    return hub
