"""`cannoli gdbserver`: gdb's remote protocol over a recorded trace.

A `Session` answers one packet at a time from a `History`; `serve` runs a
session over a byte stream (stdin/stdout for `target remote | cannoli
gdbserver TRACE`, or one TCP connection).  Nothing here reads the trace
except through History.

The debugged state is a position `pos` and a thread: the world as it was
before instruction `pos` ran.  A thread's registers there are those before
its next instruction at or after `pos`.  Resuming moves `pos`:

- continue: to the first breakpoint hit (an execution of a breakpoint's pc)
  or watchpoint trigger (a recorded access to its range) after `pos`, found
  by a search, never by stepping; at the end of the recording it stops at the
  last instruction with `replaylog:end` (or the fatal signal that ended it).
- reverse continue: the same, backwards; at position 0, `replaylog:begin`.
- step / reverse step: the thread's next / previous instruction.

A write watchpoint stops after the store going forward and at the store
(before it ran) going backward, as gdb expects; on targets whose watchpoints
trigger before the access (aarch64) the stop is reported one instruction
earlier in the direction of travel and gdb steps over it itself.

A recording is history: memory and register writes are refused.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Callable

from ..errors import CannoliError
from . import rsp, xfer
from .history import Access, History
from .target_desc import Target, target_for

PACKET_SIZE = 0x4000  # what qSupported announces; gdb's packets stay within it
MAX_POINTS = 4096  # breakpoints and watchpoints each
MAX_WATCH = 1 << 20  # bytes one watchpoint covers
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SIGTRAP = 5
# gdb's own signal numbers (include/gdb/signals.def), which the protocol uses, by Linux name
GDB_SIGNALS = {"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6, "SIGFPE": 8,
               "SIGKILL": 9, "SIGBUS": 10, "SIGSEGV": 11, "SIGSYS": 12, "SIGPIPE": 13, "SIGALRM": 14,
               "SIGTERM": 15, "SIGURG": 16, "SIGSTOP": 17, "SIGTSTP": 18, "SIGCONT": 19, "SIGCHLD": 20,
               "SIGTTIN": 21, "SIGTTOU": 22, "SIGIO": 23, "SIGXCPU": 24, "SIGXFSZ": 25, "SIGVTALRM": 26,
               "SIGPROF": 27, "SIGWINCH": 28, "SIGUSR1": 30, "SIGUSR2": 31, "SIGPWR": 32}
WATCH_KINDS = {"2": "write", "3": "read", "4": "any"}
WATCH_REASONS = {"write": "watch", "read": "rwatch", "any": "awatch"}
SUPPORTED = (f"PacketSize={PACKET_SIZE:x};QStartNoAckMode+;qXfer:features:read+;qXfer:auxv:read+;"
             "qXfer:libraries-svr4:read+;qXfer:exec-file:read+;ReverseStep+;ReverseContinue+;"
             "vContSupported+;swbreak+;hwbreak+")
ERROR = b"E01"
MEMORY_ERROR = b"E14"  # EFAULT


@dataclass(frozen=True)
class Stop:
    pos: int
    tid: int
    signal: int = SIGTRAP
    reason: str = ""  # "swbreak:", "watch:ADDR", "replaylog:end", ...


@dataclass(frozen=True)
class Watch:
    addr: int
    size: int
    kind: str  # write | read | any


@dataclass
class Session:
    history: History
    target: Target
    stop: Stop
    breakpoints: dict[int, str] = field(default_factory=dict)  # pc -> "swbreak" | "hwbreak"
    watchpoints: set[Watch] = field(default_factory=set)
    g_thread: int | None = None  # Hg: the thread whose registers g/p read
    c_thread: int | None = None  # Hc: the thread s/c (old style) resume
    no_ack: bool = False
    finished: bool = False
    _positions: dict[int, int | None] = field(default_factory=dict)  # tid -> its position at stop.pos
    _regs: dict[int, dict[str, int]] = field(default_factory=dict)  # tid -> its registers at stop.pos
    _libraries: frozenset[str] = frozenset()

    @classmethod
    def open(cls, history: History, at: int | None = None, tid: int | None = None) -> Session:
        """A session stopped at position `at` (default: the first position of `tid`, or 0) in thread
        `tid` (default: the thread that runs `at`)."""
        if tid is not None and history.thread(tid) is None:
            known = ", ".join(str(t.tid) for t in history.threads())
            raise CannoliError(f"no thread {tid} in this trace; its threads are: {known}")
        if at is None:
            at = history.thread(tid).first if tid is not None else 0
        if not 0 <= at < history.end:
            raise CannoliError(f"position {at} is outside the trace (positions 0 .. {history.end - 1})")
        if tid is None:
            here = history.instruction_at(at)
            if here is None or history.thread(here[0]) is None:
                raise CannoliError(f"position {at} belongs to another process; give --tid")
            tid = here[0]
        elif history.next_in_thread(tid, at) is None:
            raise CannoliError(f"thread {tid} has no instruction at or after position {at}")
        session = cls(history, target_for(history.arch), Stop(at, tid))
        session._libraries = session._loaded()
        return session

    # -- dispatch --------------------------------------------------------------

    def handle(self, payload: bytes) -> list[bytes]:
        """The reply packets (usually one) to one packet; [] for none.  A packet that does not parse
        gets an error reply; so does one whose answer failed, which is also logged to stderr: one bad
        packet never ends the session."""
        text = payload.decode("latin-1")  # one character per byte, whatever the bytes
        handler = self._HANDLERS.get(text[:1])
        if handler is None:
            return [b""]
        try:
            return handler(self, text)
        except (ValueError, IndexError, OverflowError, UnknownThread):
            return [ERROR]
        except Exception as exc:  # noqa: BLE001 -- the protocol boundary: report and go on
            print(f"cannoli gdbserver: failed to answer {text[:40]!r}: {exc}", file=sys.stderr, flush=True)
            return [ERROR]

    def _query(self, text: str) -> list[bytes]:
        if text.startswith("qSupported"):
            return [SUPPORTED.encode()]
        if text.startswith("qXfer:"):
            return [self._xfer(text)]
        if text == "qfThreadInfo":
            alive = [t.tid for t in self.history.threads_at(self.stop.pos)] or [self.stop.tid]
            return [b"m" + ",".join(f"{tid:x}" for tid in alive).encode()]
        if text == "qsThreadInfo":
            return [b"l"]
        if text == "qC":
            return [f"QC{self.stop.tid:x}".encode()]
        if text == "qAttached":
            return [b"1"]
        if text.startswith("qThreadExtraInfo,"):
            return [self._thread_info(_thread_id(text.split(",", 1)[1])).encode().hex().encode()]
        if text.startswith("qSymbol"):
            return [b"OK"]
        if text.startswith("qRcmd,"):
            return self._monitor(bytes.fromhex(text[6:]).decode(errors="replace"))
        return [b""]

    def _set(self, text: str) -> list[bytes]:
        if text == "QStartNoAckMode":
            self.no_ack = True  # after this reply has gone out with its ack (serve does that)
            return [b"OK"]
        return [b""]

    def _v(self, text: str) -> list[bytes]:
        if text == "vCont?":
            return [b"vCont;c;C;s;S"]
        if text.startswith("vCont;"):
            return [self._vcont(text[6:])]
        if text.startswith("vKill"):
            self.finished = True
            return [b"OK"]
        return [b""]

    # -- resuming ----------------------------------------------------------------

    def _vcont(self, actions: str) -> bytes:
        """Step the thread the first s/S action names (or the stopped one); otherwise continue all
        threads, or only the one thread that every c/C action names."""
        parsed = []
        for action in actions.split(";"):
            verb, _, thread = action.partition(":")
            parsed.append((verb[:1], self._known(_thread_id(thread)) if thread else None))
        stepping = [tid or self.stop.tid for verb, tid in parsed if verb in ("s", "S")]
        if stepping:
            return self._step(stepping[0])
        continuing = {tid for verb, tid in parsed if verb in ("c", "C")}
        return self._continue(continuing.pop() if len(continuing) == 1 else None)

    def _resume(self, text: str) -> list[bytes]:
        if text[0] in "sS":
            return [self._step(self.c_thread or self.stop.tid)]
        return [self._continue(None)]

    def _backward(self, text: str) -> list[bytes]:
        if text not in ("bc", "bs"):
            return [b""]
        return [self._reverse(step=text == "bs")]

    def _continue(self, only: int | None) -> bytes:
        """Forward to the next breakpoint or watchpoint, or to the end."""
        h, pos = self.history, self.stop.pos
        current = self._position(self.stop.tid)
        hit = h.next_execution(self.breakpoints, pos, only) if self.breakpoints else None
        if hit is not None and hit == current:  # resuming runs the instruction it stands on
            hit = h.next_execution(self.breakpoints, hit + 1, only)
        access, watch = self._first_access(lambda w: h.next_access(w.addr, w.size, w.kind, pos, only), min)
        if access is not None and (hit is None or access.idx < hit):
            return self._stopped(self._watch_stop(access, watch, forward=True))
        if hit is not None:
            return self._stopped(self._break_stop(hit))
        return self._stopped(self._end_stop(only))

    def _reverse(self, step: bool) -> bytes:
        if step:
            return self._reverse_step(self.c_thread or self.stop.tid)
        h, pos = self.history, self.stop.pos
        hit = h.prev_execution(self.breakpoints, pos) if self.breakpoints else None
        access, watch = self._first_access(lambda w: h.prev_access(w.addr, w.size, w.kind, pos), max)
        if access is not None and (hit is None or access.idx >= hit):
            return self._stopped(self._watch_stop(access, watch, forward=False))
        if hit is not None:
            return self._stopped(self._break_stop(hit))
        first = min(h.threads(), key=lambda t: t.first)
        return self._stopped(Stop(first.first, first.tid, reason="replaylog:begin"))

    def _step(self, tid: int) -> bytes:
        h = self.history
        here = self._position(tid)
        after = h.next_in_thread(tid, here + 1) if here is not None else None
        if after is None:  # its last instruction: what it did next was not recorded
            signal = GDB_SIGNALS.get(h.end_signal or "") if here == self._last().last else None
            return self._stopped(Stop(self.stop.pos, tid, signal) if signal else
                                 Stop(self.stop.pos, tid, reason="replaylog:end"))
        access, watch = self._first_access(lambda w: _at(h.next_access(w.addr, w.size, w.kind, here, tid), here), min)
        if access is not None:
            return self._stopped(self._watch_stop(access, watch, forward=True))
        return self._stopped(Stop(here + 1, tid))

    def _reverse_step(self, tid: int) -> bytes:
        h = self.history
        before = h.prev_in_thread(tid, self.stop.pos)
        if before is None:
            return self._stopped(Stop(self.stop.pos, tid, reason="replaylog:begin"))
        if not self.target.watch_stops_before_access:
            access, watch = self._first_access(
                lambda w: _at(h.prev_access(w.addr, w.size, w.kind, before + 1, tid), before), max)
            if access is not None:
                return self._stopped(self._watch_stop(access, watch, forward=False))
        return self._stopped(Stop(before, tid))

    def _first_access(self, find: Callable[[Watch], Access | None], pick) -> tuple[Access | None, Watch | None]:
        found = [(a, w) for w in self.watchpoints if (a := find(w)) is not None]
        if not found:
            return None, None
        return pick(found, key=lambda aw: aw[0].idx)

    def _break_stop(self, idx: int) -> Stop:
        tid, pc = self.history.instruction_at(idx)
        return Stop(idx, tid, reason=f"{self.breakpoints.get(pc, 'swbreak')}:")

    def _watch_stop(self, access: Access, watch: Watch, forward: bool) -> Stop:
        reason = f"{WATCH_REASONS[watch.kind]}:{max(access.addr, watch.addr):x}"
        after = forward != self.target.watch_stops_before_access
        if after and self.history.next_in_thread(access.tid, access.idx + 1) is not None:
            return Stop(access.idx + 1, access.tid, reason=reason)
        return Stop(access.idx, access.tid, reason=reason)

    def _end_stop(self, only: int | None) -> Stop:
        """At the last instruction (of thread `only`, or of the process): the signal that ended the
        recording the first time it is reached, `replaylog:end` after that."""
        if only is not None:
            return Stop(max(self.history.thread(only).last, self.stop.pos), only, reason="replaylog:end")
        last = self._last()
        signal = GDB_SIGNALS.get(self.history.end_signal or "")
        if signal and (self.stop.pos, self.stop.tid) != (last.last, last.tid):
            return Stop(last.last, last.tid, signal)
        return Stop(last.last, last.tid, reason="replaylog:end")

    def _last(self):
        """The thread that ran the process's last instruction."""
        return max(self.history.threads(), key=lambda t: t.last)

    def _stopped(self, stop: Stop) -> bytes:
        self.stop = stop
        self._positions, self._regs = {}, {}
        self.g_thread = None
        return self._stop_reply()

    def _stop_reply(self) -> bytes:
        stop = self.stop
        parts = [f"T{stop.signal:02x}"]
        if stop.reason:
            parts.append(f"{stop.reason};")
        parts.append(f"thread:{stop.tid:x};")
        regs = self._registers(stop.tid)
        for name in (self.target.pc, self.target.sp, self.target.fp):
            number = self.target.number(name)
            if self.target.value(regs, name) is not None:
                parts.append(f"{number:02x}:{self.target.hex(regs, self.target.registers[number])};")
        loaded = self._loaded()
        if loaded != self._libraries:
            self._libraries = loaded
            parts.append("library:;")
        return "".join(parts).encode()

    def _loaded(self) -> frozenset[str]:
        return frozenset(m.path for m in self.history.modules_at(self.stop.pos))

    # -- state -------------------------------------------------------------------

    def _position(self, tid: int) -> int | None:
        """The position of thread tid's next instruction at the stop: at or after stop.pos, or its last
        one if it runs no more (None: not a thread of the process)."""
        if tid not in self._positions:
            thread = self.history.thread(tid)
            nxt = self.history.next_in_thread(tid, self.stop.pos) if thread else None
            self._positions[tid] = nxt if nxt is not None else (thread.last if thread else None)
        return self._positions[tid]

    def _registers(self, tid: int) -> dict[str, int]:
        if tid not in self._regs:
            idx = self._position(tid)
            self._regs[tid] = self.history.registers_at(idx) if idx is not None else {}
        return self._regs[tid]

    def _read_registers(self, text: str) -> list[bytes]:
        regs = self._registers(self.g_thread or self.stop.tid)
        return ["".join(self.target.hex(regs, r) for r in self.target.registers).encode()]

    def _read_register(self, text: str) -> list[bytes]:
        number = int(text[1:], 16)
        if number >= len(self.target.registers):
            return [ERROR]
        regs = self._registers(self.g_thread or self.stop.tid)
        return [self.target.hex(regs, self.target.registers[number]).encode()]

    def _read_memory(self, text: str) -> list[bytes]:
        addr_text, length_text = text[1:].split(",")
        addr, length = int(addr_text, 16), int(length_text, 16)
        length = min(length, PACKET_SIZE // 2 - 16, (1 << 64) - addr)
        if length <= 0:
            return [b""] if length == 0 else [MEMORY_ERROR]
        values = self.history.memory_at(self.stop.pos, addr, length)
        known = bytes(v for v in _known_prefix(values))
        return [known.hex().encode() if known else MEMORY_ERROR]

    def _refuse(self, text: str) -> list[bytes]:
        return [ERROR]  # a recording is history: no memory or register writes

    def _thread(self, text: str) -> list[bytes]:
        tid = self._known(_thread_id(text[2:]))
        if text[1] == "g":
            self.g_thread = tid
        elif text[1] == "c":
            self.c_thread = tid
        return [b"OK"]

    def _alive(self, text: str) -> list[bytes]:
        tid = _thread_id(text[1:])
        alive = any(t.tid == tid for t in self.history.threads_at(self.stop.pos))
        return [b"OK" if alive else ERROR]

    def _known(self, tid: int | None) -> int | None:
        if tid is not None and self.history.thread(tid) is None:
            raise UnknownThread(tid)
        return tid

    def _thread_info(self, tid: int | None) -> str:
        idx = self._position(tid) if tid else None
        return "not in this process" if idx is None else f"next instruction at position {idx}"

    def _points(self, text: str) -> list[bytes]:
        kind, addr_text, size_text = text[1:].split(";")[0].split(",")
        addr, size = int(addr_text, 16), int(size_text, 16)
        insert = text[0] == "Z"
        if kind in ("0", "1"):
            if insert and len(self.breakpoints) >= MAX_POINTS:
                return [ERROR]
            if insert:
                self.breakpoints[addr] = "swbreak" if kind == "0" else "hwbreak"
            else:
                self.breakpoints.pop(addr, None)
            return [b"OK"]
        if kind not in WATCH_KINDS:
            return [b""]
        if not 1 <= size <= MAX_WATCH or addr + size > 1 << 64:
            return [ERROR]
        watch = Watch(addr, size, WATCH_KINDS[kind])
        if insert and len(self.watchpoints) >= MAX_POINTS:
            return [ERROR]
        (self.watchpoints.add if insert else self.watchpoints.discard)(watch)
        return [b"OK"]

    def _xfer(self, text: str) -> bytes:
        # qXfer:object:read:annex:offset,length
        _, obj, op, annex, span = text.split(":", 4)
        offset, length = (int(x, 16) for x in span.split(","))
        if op != "read":
            return ERROR
        h = self.history
        if obj == "features" and annex == "target.xml":
            data = self.target.xml().encode()
        elif obj == "auxv":
            data = xfer.auxv(h.module("executable"), h.module("interpreter"), self.target.word)
        elif obj == "libraries-svr4":
            data = xfer.libraries_svr4(h.modules_at(self.stop.pos)).encode()
        elif obj == "exec-file" and h.module("executable") is not None:
            data = h.module("executable").path.encode()
        else:
            return b"E00"
        return xfer.window(data, offset, min(length, PACKET_SIZE - 16))

    def _monitor(self, command: str) -> list[bytes]:
        words = command.split()
        if words[:1] == ["when"]:
            text = f"position {self.stop.pos} of {self.history.end}, thread {self.stop.tid}\n"
        else:
            text = "cannoli gdbserver monitor commands: when (the current position)\n"
        return [b"O" + text.encode().hex().encode(), b"OK"]

    def _kill(self, text: str) -> list[bytes]:
        self.finished = True
        return [] if text[0] == "k" else [b"OK"]

    def _why(self, text: str) -> list[bytes]:
        return [self._stop_reply()]

    _HANDLERS = {
        "q": _query, "Q": _set, "v": _v, "?": _why, "g": _read_registers, "p": _read_register,
        "m": _read_memory, "M": _refuse, "X": _refuse, "G": _refuse, "P": _refuse,
        "Z": _points, "z": _points, "c": _resume, "C": _resume, "s": _resume, "S": _resume,
        "H": _thread, "T": _alive, "k": _kill, "D": _kill, "b": _backward,
    }


class UnknownThread(Exception):
    """A packet names a thread the process does not have."""


def _thread_id(text: str) -> int | None:
    """A thread id of the protocol: hex; 0 (any) and -1 (all) mean no particular thread."""
    if text in ("-1", "0", ""):
        return None
    return int(text, 16)


def _at(access: Access | None, idx: int) -> Access | None:
    return access if access is not None and access.idx == idx else None


def _known_prefix(values):
    for v in values:
        if v is None:
            return
        yield v


# -- the connection ------------------------------------------------------------------


def serve(session: Session, read: Callable[[], bytes], write: Callable[[bytes], None],
          log: Callable[[str], None] | None = None) -> None:
    """Answer packets until gdb kills, detaches or disconnects."""
    decoder = rsp.Decoder()
    last = b""
    while not session.finished:
        data = read()
        if not data:
            return
        for event in decoder.feed(data):
            if isinstance(event, rsp.Ack):
                if not event.ok and last and not session.no_ack:
                    write(last)
            elif isinstance(event, rsp.BadPacket):
                if log:
                    log(f"bad packet: {event.reason}")
                write(b"-" if not session.no_ack else rsp.encode(ERROR))
            elif isinstance(event, rsp.Packet):
                acked = session.no_ack
                if not acked:
                    write(b"+")
                if log:
                    log(f"<- {event.payload[:200]!r}")
                for reply in session.handle(event.payload):
                    last = rsp.encode(reply)
                    if log:
                        log(f"-> {reply[:200]!r}")
                    write(last)
                if session.finished:
                    return
            # an Interrupt finds nothing running: every resume has answered before the next read


def serve_stdio(session: Session, log=None) -> None:
    """Serve on stdin/stdout.  Packets get a private copy of stdout and fd 1 becomes stderr, so
    nothing else a library prints can end up inside the protocol stream."""
    packets = os.dup(1)
    os.dup2(2, 1)
    try:
        serve(session, lambda: os.read(0, 1 << 16), lambda b: _write_all(packets, b), log)
    except BrokenPipeError:  # gdb went away
        return
    finally:
        os.close(packets)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise CannoliError(f"--listen {text!r}: write HOST:PORT, e.g. 127.0.0.1:2345 (port 0: any free port)")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve_tcp(session: Session, host: str, port: int, announce: Callable[[str], None], log=None) -> None:
    """Accept one gdb on host:port and serve it."""
    if host not in LOCAL_HOSTS:
        announce(f"cannoli gdbserver: warning: listening on {host}, not localhost: anyone who can reach "
                 f"this port can read the whole recording")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(1)
            announce(f"cannoli gdbserver: listening on {host}:{listener.getsockname()[1]}; "
                     f"in gdb: target remote {host}:{listener.getsockname()[1]}")
            conn, _ = listener.accept()
    except OSError as exc:
        raise CannoliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            serve(session, lambda: conn.recv(1 << 16), conn.sendall, log)
        except (ConnectionResetError, BrokenPipeError):
            return


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
