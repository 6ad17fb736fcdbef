"""The daemon's control socket: operator commands answered with their result.

`reconciler retry/gc/adopt/confirm-removals/resync` reach a running daemon here instead of by
a signal to the pid in the lock file, which names the wrong process (or none) from outside the
daemon's PID namespace (a pod). The socket lives under root_path (`Settings.control_socket`,
mode 0600: root's alone), which the host and the pod share.

Protocol: one request per connection, one line of JSON each way (UTF-8, ending in a newline).

    > {"command": "retry", "name": "db"}
    < {"ok": true, "done": "db taken out of Faulty (...)", "error": null,
       "devices": [{"name": "db", "state": "Activated", "error": null, "converged": true}]}

`command` is a `Command`; `retry` and `adopt` take `name` (and `adopt` a `thin_id`),
`confirm-removals` the `names` the operator saw held. A request longer than MAX_REQUEST,
nested deeper than MAX_NESTING, not whole within REQUEST_TIMEOUT (all of it, however it
trickles in), or one that is not such an object, is answered with `{"ok": false, "error":
...}`; no input ends the daemon. The handler (the daemon's) runs each request on the
reconcile thread and answers after the pass that served it.

No caller holds more than its share. MAX_CALLERS are served at once, each on a thread of its
own; a caller beyond them is read to the end of its line on the accept thread (without
blocking it: closing a unix socket with unread bytes resets the caller) and told the daemon
is busy, within BUSY_TIMEOUT. The backlog has room for a crowd, and an accept that fails for
want of descriptors pauses the loop (reconciler.daemon.descriptors) instead of spinning.

Sockets are taken and given back by `reconciler.sockets.OwnedSocket`: a live socket of
another process at the path stops the daemon from starting; a stale one is replaced;
anything else there is refused, untouched.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from reconciler.daemon.busy import BusyCallers
from reconciler.daemon.descriptors import AcceptBackoff
from reconciler.sockets import OwnedSocket, reachable
from reconciler.vocabulary import ThinId, ThinIdError

log = structlog.get_logger(__name__)

# A confirm-removals request carries every held name: room for tens of thousands.
MAX_REQUEST = 1 << 20
# An answer lists devices (a gc of every Faulty device): more room still.
MAX_ANSWER = 16 << 20
# How deep a request's arrays and objects may nest (a request needs 2); checked before the
# JSON parser, whose recursion a line of 100,000 `[` would exhaust.
MAX_NESTING = 32
# How long a caller may take to send its whole line (however it trickles in); a slow one is
# answered and dropped.
REQUEST_TIMEOUT = 5.0
# How long the CLI waits for a connect, and then for the answer (the pass that serves the
# request may first wait behind a long one: a large mkfs, a 10,000-device resync).
CONNECT_TIMEOUT = 5.0
ANSWER_TIMEOUT = 300.0
# Callers served at once; more are told the daemon is busy (each holds a thread).
MAX_CALLERS = 16
# Connections the kernel queues before an accept: room for a crowd of callers at once (a
# unix connect to a full backlog fails with EAGAIN).
BACKLOG = 256
# Busy callers read to the end of their line at once (on the accept thread), and how long
# each has to send it before it is told anyway; beyond that many, told at once.
MAX_WAITING = 256
BUSY_TIMEOUT = 1.0
# How long `ask` tries again to connect while the daemon's backlog is full.
CONNECT_RETRY = 0.05


class Command(StrEnum):
    """What an operator asks of the daemon (the protocol's words)."""

    RETRY = "retry"
    GC_ORPHANS = "gc-orphans"
    GC_FAULTY = "gc-faulty"
    ADOPT = "adopt"
    CONFIRM_REMOVALS = "confirm-removals"
    RESYNC = "resync"


class BadRequest(ValueError):
    """A request line that is not a valid request; the message says what is wrong."""


class ControlUnreachable(RuntimeError):
    """No answer from the control socket; the message says why."""


@dataclass(frozen=True)
class ControlRequest:
    """One operator command."""

    command: Command
    name: str = ""
    thin_id: int | None = None
    names: tuple[str, ...] = ()
    # confirm-removals: the config the operator ran with (reconcile.holds.Selection's text).
    selection: str = ""

    def to_line(self) -> bytes:
        """The request as sent."""
        body: dict[str, Any] = {"command": self.command.value}
        if self.name:
            body["name"] = self.name
        if self.thin_id is not None:
            body["thin_id"] = self.thin_id
        if self.names:
            body["names"] = list(self.names)
        if self.selection:
            body["selection"] = self.selection
        return json.dumps(body).encode() + b"\n"


@dataclass(frozen=True)
class DeviceAnswer:
    """A device the request concerns, as the pass that served it left it."""

    name: str
    state: str
    error: str | None = None
    converged: bool = False


@dataclass(frozen=True)
class ControlAnswer:
    """What the daemon did with a request."""

    ok: bool
    done: str = ""
    error: str | None = None
    devices: tuple[DeviceAnswer, ...] = field(default_factory=tuple)

    def to_line(self) -> bytes:
        """The answer as sent."""
        body = asdict(self)
        body["devices"] = [asdict(d) for d in self.devices]
        return json.dumps(body).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> ControlAnswer:
        """Read an answer; BadRequest when it is not one."""
        try:
            body = json.loads(line)
            devices = tuple(DeviceAnswer(name=str(d["name"]), state=str(d["state"]),
                                         error=_optional_text(d.get("error")),
                                         converged=bool(d.get("converged")))
                            for d in body.get("devices") or ())
            return cls(ok=bool(body["ok"]), done=str(body.get("done") or ""),
                       error=_optional_text(body.get("error")), devices=devices)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BadRequest(f"not an answer: {exc}") from None


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


# A name as a spec file's stem may be; longer or stranger text is refused where it enters.
NAME_MAX = 255


def _name(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > NAME_MAX or "\0" in value:
        raise BadRequest(f"{key!r} must be a device name (1-{NAME_MAX} characters)")
    return value


# What the nesting check looks at: quotes and backslashes (strings), brackets and braces.
_JSON_MARKS = re.compile(rb'["\\\[\]{}]')


def check_nesting(line: bytes, limit: int = MAX_NESTING) -> None:
    """BadRequest when `line`'s arrays and objects nest deeper than `limit` (brackets inside
    strings do not count); one linear scan, before any parser recurses."""
    depth, in_string, skip_to = 0, False, 0
    for mark in _JSON_MARKS.finditer(line):
        at = mark.start()
        if at < skip_to:  # the byte a backslash escapes
            continue
        char = line[at]
        if in_string:
            if char == 0x5C:
                skip_to = at + 2
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in b"[{":
            depth += 1
            if depth > limit:
                raise BadRequest(f"not a line of JSON: nested deeper than {limit}")
        elif char in b"]}":
            depth -= 1


def parse_request(line: bytes) -> ControlRequest:
    """Validate one request line; BadRequest names what is wrong."""
    check_nesting(line)
    try:
        body = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"not a line of JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("a request is a JSON object")
    try:
        command = Command(str(body.get("command")))
    except ValueError:
        raise BadRequest(f"'command' must be one of {', '.join(Command)}") from None
    if command in (Command.RETRY, Command.ADOPT):
        name = _name(body, "name")
        thin_id = None
        if command is Command.ADOPT:
            raw: Any = body.get("thin_id")  # JSON: checked by ThinId (no bool, text or float)
            try:
                thin_id = ThinId(raw)
            except ThinIdError:
                raise BadRequest("'thin_id' must be a thin id (0 to 2^24-1)") from None
        return ControlRequest(command, name, thin_id)
    if command is Command.CONFIRM_REMOVALS:
        names = body.get("names")
        if not isinstance(names, list):
            raise BadRequest("'names' must be the list of held removals to confirm")
        selection = body.get("selection", "")
        if not isinstance(selection, str):
            raise BadRequest("'selection' must be the config's selection, as text")
        return ControlRequest(command, names=tuple(_name({"n": n}, "n") for n in names),
                              selection=selection)
    return ControlRequest(command)


Handler = Callable[[ControlRequest], ControlAnswer]


def answer(handler: Handler, line: bytes) -> ControlAnswer:
    """The answer to one request line; never raises (a handler's failure is its answer)."""
    try:
        request = parse_request(line)
    except BadRequest as exc:
        log.warning("control.bad_request", error=str(exc), next="answered with the error")
        return ControlAnswer(ok=False, error=f"bad request: {exc}")
    try:
        return handler(request)
    except Exception as exc:  # the caller is told; the daemon goes on
        log.exception("control.failed", command=request.command.value, error=str(exc))
        return ControlAnswer(ok=False, error=f"{type(exc).__name__}: {exc}")


def _read_line(conn: socket.socket, limit: int, deadline: float | None = None) -> bytes:
    """Bytes up to the first newline; BadRequest past `limit` or at EOF without one;
    TimeoutError once the monotonic clock passes `deadline` (None: the socket's timeout
    bounds each recv)."""
    data = bytearray()
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            conn.settimeout(left)
        chunk = conn.recv(65536)
        if not chunk:
            raise BadRequest("the connection closed before a full line")
        end = chunk.find(b"\n")
        if end >= 0:
            data += chunk[:end]
            if len(data) > limit:
                break
            return bytes(data)
        data += chunk
        if len(data) > limit:
            break
    raise BadRequest(f"longer than {limit} bytes")


class ControlServer:
    """Accepts on one thread; each caller is served on a thread of its own (at most
    MAX_CALLERS at once), which waits for the handler's answer; callers beyond them are told
    the daemon is busy (`BusyCallers`)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._socket = OwnedSocket(path, f"control socket {path}")
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._callers = threading.BoundedSemaphore(MAX_CALLERS)
        self._backoff = AcceptBackoff("control")

    def start(self) -> None:
        """Take the path (SocketUnavailable when it is not ours to take) and serve."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)

        def bind(address: str) -> None:
            listener.bind(address)
            listener.listen(BACKLOG)

        try:
            self._socket.claim(bind, listener.close)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._accept_loop, name="control",
                                        daemon=True)
        self._thread.start()
        log.info("control.serving", socket=str(self.path))

    def stop(self) -> None:
        """Stop accepting; unlink the path only while it is the socket we bound. Callers
        being served are answered by the handler (the daemon refuses what it will not do)."""
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if not self._socket.release():
            log.warning("control.socket_left", socket=str(self.path),
                        reason="no longer the socket this daemon bound (another process "
                        "replaced it): not ours to remove")

    def _accept_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener
        # A selector, not select(): descriptors past 1024 (the limit raised) are common.
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            selector.register(listener, selectors.EVENT_READ)
            busy = BusyCallers(selector, ControlAnswer(
                ok=False, error=f"the daemon is serving {MAX_CALLERS} callers: ask again",
            ).to_line(), most=MAX_WAITING, timeout=BUSY_TIMEOUT)
            resume_at: float | None = None  # while descriptors are short, accept after this
            try:
                while True:
                    if resume_at is not None and time.monotonic() >= resume_at:
                        selector.register(listener, selectors.EVENT_READ)
                        resume_at = None
                    due = [at for at in (resume_at, busy.next_at()) if at is not None]
                    timeout = max(0.0, min(due) - time.monotonic()) if due else None
                    for key, _ in selector.select(timeout):
                        if key.fileobj == self._wake_r:
                            return
                        if key.fileobj is listener:
                            pause = self._accept(listener, busy)
                            if pause > 0:
                                selector.unregister(listener)
                                resume_at = time.monotonic() + pause
                        elif isinstance(key.fileobj, socket.socket):
                            busy.readable(key.fileobj)
                    busy.expire(time.monotonic())
            finally:
                busy.close()

    def _accept(self, listener: socket.socket, busy: BusyCallers) -> float:
        """Accept one caller: served, or read and told busy. The pause before the next
        accept (0 unless descriptors are short)."""
        try:
            conn, _ = listener.accept()
        except OSError as exc:  # the caller gave up already, or out of descriptors
            return self._backoff.failed(exc)
        self._backoff.accepted()
        if not self._callers.acquire(blocking=False):
            busy.add(conn)
            return 0.0
        try:
            threading.Thread(target=self._serve, args=(conn,), name="control-caller",
                             daemon=True).start()
        except RuntimeError:  # no thread to be had: this caller is told to come back
            self._callers.release()
            busy.add(conn)
        return 0.0

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                try:
                    line = _read_line(conn, MAX_REQUEST, time.monotonic() + REQUEST_TIMEOUT)
                except BadRequest as exc:
                    reply = ControlAnswer(ok=False, error=f"bad request: {exc}")
                except TimeoutError:
                    reply = ControlAnswer(ok=False, error="bad request: no full line within "
                                          f"{REQUEST_TIMEOUT:g}s")
                else:
                    reply = answer(self._handler, line)
                conn.settimeout(REQUEST_TIMEOUT)  # sendall: the whole answer within it
                conn.sendall(reply.to_line())
        except OSError as exc:  # the caller left before its answer
            log.info("control.caller_left", error=str(exc))
        except Exception:  # a thread's bug must not go unseen, nor spread
            log.exception("control.serve_failed")
        finally:
            self._callers.release()


def _connect(conn: socket.socket, path: Path) -> None:
    """Connect within CONNECT_TIMEOUT, trying again while the daemon's backlog is full (a
    unix connect then fails with EAGAIN at once, whatever the timeout)."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        try:
            with reachable(path) as address:
                conn.connect(address)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            time.sleep(CONNECT_RETRY)


def ask(path: Path, request: ControlRequest, timeout: float = ANSWER_TIMEOUT) -> ControlAnswer:
    """Send one request and return the daemon's answer; ControlUnreachable when nothing
    answers at `path` (no socket, a stale one, a silent daemon)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(CONNECT_TIMEOUT)
        try:
            _connect(conn, path)
        except FileNotFoundError:
            raise ControlUnreachable(f"no control socket at {path}") from None
        except ConnectionRefusedError:
            raise ControlUnreachable(f"nothing listens on {path} (a stale socket)") from None
        except TimeoutError:
            raise ControlUnreachable(f"{path} did not accept within "
                                     f"{CONNECT_TIMEOUT:g}s") from None
        except OSError as exc:
            raise ControlUnreachable(f"{path}: {exc.strerror or exc}") from None
        conn.settimeout(timeout)
        try:
            conn.sendall(request.to_line())
            line = _read_line(conn, MAX_ANSWER)
        except TimeoutError:
            raise ControlUnreachable(f"no answer on {path} within {timeout:g}s (the request "
                                     "may still be served: see `reconciler status`)") from None
        except BadRequest as exc:
            raise ControlUnreachable(f"no answer on {path}: {exc}") from None
        except OSError as exc:
            raise ControlUnreachable(f"{path}: {exc.strerror or exc}") from None
        try:
            return ControlAnswer.from_line(line)
        except BadRequest as exc:
            raise ControlUnreachable(f"{path}: {exc}") from None
    finally:
        conn.close()
