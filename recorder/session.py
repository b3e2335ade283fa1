"""One recording: start QEMU with the plugin, drain the ring into chunk files
until QEMU is gone, salvage what its threads left in their lanes, and finalise
meta.json.

The drain loop runs in this (the `cannoli record`) process; compression runs in
worker threads (chunk_writer.py).  The guest's stdio is inherited and its exit
status is returned unchanged (128 + signal when it died of a signal).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from cannoli_db import __version__, layout_log, native, syscall_tables, tracedir
from cannoli_db import arch as guest_arch
from cannoli_db import format as F
from cannoli_db.decode import split_view
from cannoli_db.errors import CannoliError

from . import config, guest_binary
from .chunk_writer import ChunkWriter
from .live import LiveLine
from .ring import Ring, ring_header
from .stream_stats import StreamStats

DRAIN_IDLE_SLEEP = 0.0005
# bytes the recording leaves free on the trace's file system (at most 5% of it)
FREE_MARGIN = 256 << 20


@dataclass
class RecordOptions:
    program: str
    args: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    record_mem: bool = True
    record_regs: bool | None = None  # None: wherever the QEMU can give registers
    regs_check: bool = False  # read every register at every block; count what the masks missed
    inline_records: bool = True  # where the QEMU can (qemu_patches/0004): records from its generated code
    qemu: str | None = None
    sysroot: str | None = None
    force: bool = False
    n_lanes: int = 32
    qemu_options: list[str] = field(default_factory=list)
    zstd_level: int = 1
    max_size: int | None = None  # bytes of chunks: the recording stops cleanly there
    progress: bool | None = None  # a live line on stderr (None: when stderr is a terminal)
    follow_exec: bool = True  # run exec'd programs under QEMU too, where it can (qemu_patches/0003)


@dataclass
class RecordResult:
    trace_dir: Path
    exit_status: int
    signal: int | None
    instructions: int
    blocks_executed: int
    mem_events: int
    syscalls: int
    threads: int
    bytes_on_disk: int
    chunks: int
    wall_time: float
    interrupted: bool
    producer_waits: int
    meta: dict
    stopped: str | None = None  # why the recorder stopped the guest (a limit), if it did


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class _Interrupts:
    """Ctrl-C while recording: the guest (same process group) gets it from the
    terminal; we note it and keep draining.  A second one kills QEMU."""

    def __init__(self):
        self.count = 0
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        self._old_int = signal.signal(signal.SIGINT, self._on_signal)
        self._old_term = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old_int)
        signal.signal(signal.SIGTERM, self._old_term)

    def _on_signal(self, signum, frame):
        self.count += 1
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.count > 1:
            self.proc.kill()
        elif signum == signal.SIGTERM:
            self.proc.terminate()


def _qemu_command(qemu: native.Qemu, plugin: Path, ring: Ring, opts: RecordOptions,
                  run: guest_binary.Launch, trace_dir: Path) -> list[str]:
    # the ring by a path every QEMU of the recording opens, also one that an exec started; and
    # inherited (fd=), so that it holds QEMU's lowest descriptor until the plugin closes it
    ring_path = f"/proc/{os.getpid()}/fd/{ring.fd}"
    plugin_arg = f"{plugin},ring={ring_path},fd={ring.fd},mem={'on' if opts.record_mem else 'off'}"
    regs = _regs_mode(opts, qemu)
    if regs:
        plugin_arg += f",regs={regs}"
        if qemu.computes_x86_flags and regs != "off":
            plugin_arg += ",x86_flags=on"
    if qemu.records_inline:
        plugin_arg += f",inline={'on' if opts.inline_records else 'off'}"
    log = (trace_dir / layout_log.LOG_NAME).resolve()
    logging = layout_log.qemu_args(log, opts.qemu_options)
    if logging:
        plugin_arg += f",layout_log={log}"
    cmd = [qemu.path, "-plugin", plugin_arg, *logging]
    if _follows_exec(qemu, opts):
        cmd.append("-follow-exec")
    if opts.sysroot:
        cmd += ["-L", opts.sysroot]
    cmd += opts.qemu_options
    # -0: the argv[0] the kernel would give (the program as typed; a script's interpreter)
    cmd += ["-0", run.argv[0], run.binary.path, *run.argv[1:]]
    return cmd


def _follows_exec(qemu: native.Qemu, opts: RecordOptions) -> bool:
    return qemu.follows_exec and opts.follow_exec


def _exec_note(qemu: native.Qemu, opts: RecordOptions, left: list[dict]) -> str | None:
    """The one line that says why exec'd programs were not recorded, if some were not."""
    if not left:
        return None
    n = len({d["pid"] for d in left})
    who = f"{n} process{'es' if n != 1 else ''}"
    if not qemu.follows_exec:
        return (f"cannoli: {who} exec'd programs that ran unrecorded: this QEMU ({qemu.path}, "
                f"{'.'.join(map(str, qemu.version))}) does not follow exec; `cannoli setup-qemu` builds one "
                f"that does (record with --qemu built)")
    if not opts.follow_exec:
        return f"cannoli: {who} exec'd programs that ran unrecorded (--no-follow-exec)"
    return (f"cannoli: {who} exec'd programs this QEMU does not run (another architecture, or unreadable): "
            f"the kernel ran them, unrecorded")


def _regs_mode(opts: RecordOptions, qemu: native.Qemu) -> str | None:
    """The plugin's regs option: on, off or check; None where QEMU has no register access."""
    if not qemu.has_registers:
        return None
    return "check" if opts.regs_check else "off" if opts.record_regs is False else "on"


def _initial_meta(opts: RecordOptions, run: guest_binary.Launch, qemu: native.Qemu) -> dict:
    guest = run.binary
    return {
        "format_version": F.FORMAT_VERSION,
        "cannoli_db_version": __version__,
        "complete": False,
        "argv": [opts.program, *opts.args],
        "script": run.script,
        "program_path": os.path.abspath(guest.path),
        "arch": guest.arch,
        "interpreter": guest.interpreter,
        "sysroot": opts.sysroot,
        "cwd": os.getcwd(),
        "qemu_path": qemu.path,
        "qemu_version": ".".join(map(str, qemu.version)),
        "plugin_api": qemu.plugin_api,
        "record_mem": opts.record_mem,
        "record_regs": _regs_mode(opts, qemu) in ("on", "check"),
        "regs_check": opts.regs_check,
        "qemu_options": opts.qemu_options,
        "follow_exec": _follows_exec(qemu, opts),
        "start_time": _now(),
        "recorder_pid": os.getpid(),
    }


def record(opts: RecordOptions) -> RecordResult:
    run = guest_binary.launch(opts.program, opts.args)
    guest = run.binary
    _check_interpreter(guest, opts.sysroot)
    opts, qemu_why = _with_settings(opts, guest.arch)
    qemu = native.find_qemu(guest.arch, opts.qemu)
    if (opts.record_regs or opts.regs_check) and not qemu.has_registers:
        raise CannoliError(
            f"--regs: {qemu.path} is QEMU {'.'.join(map(str, qemu.version))} (plugin API {qemu.plugin_api}), "
            f"which gives plugins no registers; build QEMU 10 with `cannoli setup-qemu` and pass --qemu"
        )
    plugin = native.plugin_path(qemu)
    ring = Ring(opts.n_lanes)
    trace_dir = tracedir.create(opts.out_dir or tracedir.default_trace_dir(opts.program), opts.force)
    meta = _initial_meta(opts, run, qemu)
    meta["qemu_choice"] = qemu_why
    tracedir.write_meta(trace_dir, meta)
    writer = ChunkWriter(trace_dir / tracedir.CHUNKS_NAME, ring.max_side, ring.max_heavy, level=opts.zstd_level)
    stats = StreamStats(arch=guest.arch)
    started = time.monotonic()
    cpu_before = _cpu_seconds()
    try:
        with _Interrupts() as interrupts:
            try:
                proc = subprocess.Popen(_qemu_command(qemu, plugin, ring, opts, run, trace_dir), pass_fds=[ring.fd])
            except OSError as exc:
                raise CannoliError(f"cannot start {qemu.path}: {exc.strerror}") from None
            interrupts.proc = proc
            limits = _Limits(trace_dir, opts.max_size)
            with LiveLine(opts.progress, ring, stats, writer, started) as live:
                error = _drain(ring, proc, writer, stats, limits, live)
            returncode = proc.wait()
            meta["initial_layout"] = _take_layout(trace_dir)
            wall = time.monotonic() - started
            meta["cpu_seconds"] = _cpu_spent(cpu_before)
            header = ring_header(ring)
            instructions, drawn = stats.instructions()
            if not header["plugin_ready"]:
                raise CannoliError(
                    f"QEMU exited (status {returncode}) without loading the plugin; its message is above"
                )
            if stats.packets == 0:
                raise CannoliError(f"QEMU exited (status {returncode}) before the program started; its message is above")
    except BaseException:
        _abandon(trace_dir, meta, writer)
        raise
    finally:
        ring.close()
    if error is not None:
        meta.update(complete=False, error=str(error), end_time=_now())
        tracedir.write_meta(trace_dir, meta)
        raise CannoliError(f"recording stopped: {error}; the chunks written so far in {trace_dir} are valid")
    if drawn != header["next_idx"]:
        meta["positions_lost"] = header["next_idx"] - drawn
    return _finish(trace_dir, meta, returncode, wall, stats, instructions, writer, header, interrupts.count > 0,
                   limits.stopped, lambda left: _exec_note(qemu, opts, left))


def _cpu_seconds() -> tuple[float, float]:
    """(this process, its reaped children) user + system CPU seconds so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _cpu_spent(before: tuple[float, float]) -> dict:
    """CPU seconds of the recording: the recorder (drain loop and compression
    threads) and QEMU (the only child reaped meanwhile), apart: which one is the wall."""
    now = _cpu_seconds()
    return {"recorder": round(now[0] - before[0], 3), "qemu": round(now[1] - before[1], 3)}


def _with_settings(opts: RecordOptions, arch: str) -> tuple[RecordOptions, str]:
    """Options with the settings file's qemu and regs where the command line
    left them open, and why that QEMU."""
    settings = config.load()
    regs = opts.record_regs if opts.record_regs is not None else settings.regs
    choice = config.choose_qemu(opts.qemu, settings, arch)
    return replace(opts, qemu=choice.path, record_regs=regs), choice.why


def _check_interpreter(guest: guest_binary.GuestBinary, sysroot: str | None) -> None:
    """A dynamically linked program needs its loader where QEMU will look: in -L
    SYSROOT, or on the host.  Say so before QEMU fails with less to go on."""
    interp = guest.interpreter
    if not interp:
        return
    if sysroot and not os.path.isdir(sysroot):
        raise CannoliError(f"-L {sysroot}: no such directory")
    candidates = ([os.path.join(sysroot, interp.lstrip("/"))] if sysroot else []) + [interp]
    if not any(os.path.exists(c) for c in candidates):
        sysroot = guest_arch.get(guest.arch).sysroot
        raise CannoliError(f"{guest.path} is dynamically linked for {guest.arch} and its loader {interp} was not "
                           f"found; give its libraries with -L SYSROOT (on Debian: -L {sysroot})")


def _take_layout(trace_dir: Path) -> dict | None:
    log = trace_dir / layout_log.LOG_NAME
    layout = layout_log.parse(log)
    log.unlink(missing_ok=True)
    return layout


@dataclass
class _Limits:
    """When the recorder stops the guest: at --max-size bytes of chunks, or when
    the trace's file system has less than FREE_MARGIN bytes left."""

    trace_dir: Path
    max_size: int | None
    stopped: str | None = None

    def reached(self, written: int) -> bool:
        if self.max_size is not None and written >= self.max_size:
            self.stopped = f"max size reached (--max-size {_size(self.max_size)})"
        else:
            usage = shutil.disk_usage(self.trace_dir)
            margin = min(FREE_MARGIN, usage.total // 20)
            if usage.free < margin:
                self.stopped = (f"disk space: {_size(usage.free)} left on the trace's file system "
                                f"(the recording keeps {_size(margin)} free)")
        return self.stopped is not None

    def disk_full(self, exc: OSError) -> bool:
        """A chunk could not be written for want of space: a stop like the margin's."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            self.stopped = f"disk space: {exc.strerror} while writing a chunk"
        return self.stopped is not None


def _drain(ring: Ring, proc: subprocess.Popen, writer: ChunkWriter, stats: StreamStats, limits: _Limits,
           live: LiveLine) -> Exception | None:
    """Move packets from the ring to chunk files until QEMU exits, then salvage.
    Returns the error that stopped writing (e.g. disk full), if any.  At a limit
    the guest is stopped, and what it had not handed over is left out: the
    chunks written so far stay valid."""

    def keep(room, side: int, heavy: int) -> int:
        if side:
            view, _, _ = split_view(room[0], room[1], room[2], room[3])
            stats.add(view)
            chunks = writer.chunks_started
            writer.commit(side, heavy, view)
            if writer.chunks_started != chunks and limits.reached(writer.bytes_written):
                raise _Stop
        return side

    def take() -> int:
        room = writer.room()
        return keep(room, *ring.take_full(room))

    def salvage_room():
        room = writer.room()
        return room, lambda side, heavy: keep(room, side, heavy)

    try:
        while True:
            if take():
                live.update()
                continue
            if proc.poll() is not None:
                break
            live.update()
            time.sleep(DRAIN_IDLE_SLEEP)
        while take():
            pass
        ring.salvage(salvage_room)
        writer.close()
    except _Stop:
        ring.stop_producers()
        proc.kill()
        return _close_after_stop(writer, limits)
    except OSError as exc:
        ring.stop_producers()
        proc.kill()
        return _close_after_stop(writer, limits) if limits.disk_full(exc) else exc
    return None


def _close_after_stop(writer: ChunkWriter, limits: _Limits) -> OSError | None:
    """Wait for the chunks being written; one that fails for want of space is
    left out (never partial), other errors are errors."""
    try:
        writer.close(drop_batch=True)
    except OSError as exc:
        if not limits.disk_full(exc):
            return exc
    return None


class _Stop(Exception):
    """A limit was reached: stop the guest."""


def _abandon(trace_dir: Path, meta: dict, writer: ChunkWriter) -> None:
    """A failure before anything was recorded: leave no trace directory that
    could be mistaken for a recording."""
    try:
        writer.close()
    except Exception:
        pass
    if writer.chunks == 0:
        shutil.rmtree(trace_dir, ignore_errors=True)
    else:
        (trace_dir / layout_log.LOG_NAME).unlink(missing_ok=True)
        meta.update(complete=False, error="recording aborted", end_time=_now())
        tracedir.write_meta(trace_dir, meta)


def _finish(trace_dir: Path, meta: dict, returncode: int, wall: float, stats: StreamStats, instructions: int,
            writer: ChunkWriter, header: dict, interrupted: bool, stopped: str | None,
            exec_note: Callable[[list[dict]], str | None]) -> RecordResult:
    sig = -returncode if returncode < 0 else None
    status = 128 + sig if sig else returncode
    # SIGKILL stops QEMU's threads wherever they are, not at an instruction
    # boundary QEMU chose: their last blocks are cut at unknown points
    killed = sig == signal.SIGKILL and not interrupted and not stopped
    arch = header["target"].decode(errors="replace")
    execs = {nr for nr, name in syscall_tables.names(arch).items() if name in ("execve", "execveat")}
    left = stats.left_by_exec(execs)
    meta.update(
        left_by_exec=left,
        exec_note=exec_note(left),
        complete=not interrupted and not killed and not stopped,
        incomplete_reason=stopped or ("QEMU was killed with SIGKILL; each thread's last block is cut where the "
                                      "kill found it" if killed else None),
        stopped=stopped,
        interrupted=interrupted,
        end_time=_now(),
        wall_time_s=round(wall, 6),
        exit_status=status,
        exit_signal=sig,
        exit_signal_name=signal.Signals(sig).name if sig and sig in signal.Signals._value2member_map_ else None,
        qemu_target=header["target"].decode(errors="replace"),
        guest_base=header["guest_base"],
        regs_recorded=header["regs_recorded"],
        regs_unavailable=tracedir.regs_unavailable(header["regs_state"], meta),
        regs_missed=header["regs_missed"] if meta.get("regs_check") else None,
        inline_records=bool(header["inline_records"]),
        counts={
            "instructions": instructions,
            "blocks_executed": stats.blocks_executed,
            "mem_events": stats.mem_events,
            "syscalls": stats.syscalls,
            "threads": len(stats.threads),
            "processes": len({pid for pid, _ in stats.threads}),
            "packets": stats.packets,
            "salvaged_packets": stats.salvaged_packets,
            "chunks": writer.chunks,
            "bytes_on_disk": writer.bytes_written,
            "raw_bytes": writer.raw_bytes,
            "producer_waits": header["producer_waits"],
        },
    )
    tracedir.write_meta(trace_dir, meta)
    return RecordResult(
        trace_dir=trace_dir,
        exit_status=status,
        signal=sig,
        instructions=instructions,
        blocks_executed=stats.blocks_executed,
        mem_events=stats.mem_events,
        syscalls=stats.syscalls,
        threads=len(stats.threads),
        bytes_on_disk=writer.bytes_written,
        chunks=writer.chunks,
        wall_time=wall,
        interrupted=interrupted,
        producer_waits=header["producer_waits"],
        meta=meta,
        stopped=stopped,
    )


def summary(result: RecordResult) -> str:
    """The one-paragraph summary `cannoli record` prints on stderr."""
    per_insn = result.bytes_on_disk / result.instructions if result.instructions else 0.0
    name = result.meta.get("exit_signal_name") or f"signal {result.signal}"
    how = f"was killed by {name}" if result.signal else f"exited with status {result.exit_status}"
    if result.stopped:
        how = f"was stopped by the recorder ({result.stopped}; the trace is valid and marked incomplete)"
    elif result.interrupted:
        how += " after an interrupt (trace marked interrupted)"
    elif result.meta.get("incomplete_reason"):
        how += f" (trace marked incomplete: {result.meta['incomplete_reason']})"
    for left in result.meta.get("left_by_exec") or []:
        how += (f"; process {left['pid']} called exec({left['path'] or '?'}), and what it ran from there on "
                f"is not recorded")
    note = f"\n{result.meta['exec_note']}" if result.meta.get("exec_note") else ""
    return (
        f"cannoli: recorded {result.meta['argv'][0]} ({result.meta['arch']}), which {how}: "
        f"{result.instructions:,} guest instructions in {result.blocks_executed:,} executed blocks, "
        f"{result.mem_events:,} memory accesses, {result.syscalls:,} syscalls, "
        f"{result.threads} thread{'s' if result.threads != 1 else ''}; "
        f"{_size(result.bytes_on_disk)} on disk in {result.chunks} chunk{'s' if result.chunks != 1 else ''} "
        f"({per_insn:.3f} bytes/instruction); wall time {result.wall_time:.2f} s{_qemu_said(result.meta)}. "
        f"Trace: {result.trace_dir}{note}"
    )


def _qemu_said(meta: dict) -> str:
    """Which QEMU recorded, how (its generated code or callbacks wrote the records) and why that one."""
    how = "records from its generated code" if meta.get("inline_records") else "records by callbacks"
    why = f"; {meta['qemu_choice']}" if meta.get("qemu_choice") else ""
    return f" on QEMU {meta.get('qemu_version')} ({how}{why})"


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)

