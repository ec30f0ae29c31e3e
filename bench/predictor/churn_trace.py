#!/usr/bin/env python3
"""Where a new connection's time goes in a router, from a kernel trace.

Input: `perf script` output of a trace taken by churn.sh --trace:
  - sock:inet_sock_set_state with sport == the router's port and newstate
    ESTABLISHED: the moment the kernel completed a client's handshake and
    queued the connection for accept (on loopback, right before the client
    sends its request);
  - syscalls:sys_exit_accept4 of the router's thread: the connection
    accepted (the listening socket's queue is FIFO, so the n-th accept
    takes the n-th connection established);
  - sys_enter_write/writev/sendto/sendmsg of the router's thread: the first
    write on an accepted descriptor is the response (the request had to be
    read first);
  - sys_enter_close: the descriptor closed;
  - optionally sched:sched_wakeup and sched:sched_switch on every core:
    how long each program waited, runnable, for a core (from its wake-up,
    or from being preempted, to running again), by program name.

Output: percentiles (p50, p90, p99, max, ms) of three spans per
connection: queued (established -> accepted: the accept queue, the router
not yet at its accept loop), answered (accepted -> first write of the
response: reading, routing, the upstream exchange) and the sum, for
connections that went through all three; with the sched events, the
waits for a core by program (p50, p99, max, and the total in seconds).

Usage: churn_trace.py TRACE.txt [--label NAME]
"""

import argparse
import re
import sys

EVENT = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+([\w:]+):\s*(.*)$")


def percentiles(xs):
    if not xs:
        return "n=0"
    xs = sorted(xs)

    def at(p):
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    return (f"n={len(xs)} p50={at(0.5) * 1e3:.2f} p90={at(0.9) * 1e3:.2f} "
            f"p99={at(0.99) * 1e3:.2f} max={xs[-1] * 1e3:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    established = []  # times, FIFO
    open_fds = {}  # fd -> [t_established, t_accepted, t_first_write]
    done = []
    unmatched_accepts = 0
    runnable_since = {}  # tid -> time it became runnable
    waits = {}  # program name -> waits for a core (s)
    for line in open(a.trace, errors="replace"):
        m = EVENT.match(line)
        if not m:
            continue
        t = float(m.group(4))
        ev = m.group(5)
        rest = m.group(6)
        if ev == "sched:sched_wakeup":
            f = dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)
            tid = f.get("pid")
            if tid is not None and tid not in runnable_since:
                runnable_since[tid] = t
        elif ev == "sched:sched_switch":
            head, _, tail = rest.partition(" ==> ")
            prev = dict(kv.split("=", 1) for kv in head.split() if "=" in kv)
            nxt = dict(kv.split("=", 1) for kv in tail.split() if "=" in kv)
            if prev.get("prev_state", "").startswith("R"):
                runnable_since[prev.get("prev_pid")] = t
            else:
                runnable_since.pop(prev.get("prev_pid"), None)
            since = runnable_since.pop(nxt.get("next_pid"), None)
            if since is not None and nxt.get("next_pid") != "0":
                waits.setdefault(nxt.get("next_comm", "?"), []).append(t - since)
        elif ev == "sock:inet_sock_set_state":
            if "newstate=TCP_ESTABLISHED" in rest:
                established.append(t)
        elif ev == "syscalls:sys_exit_accept4":
            ret = int(rest.split()[-1], 16) if rest.strip().startswith("0x") else int(rest.split()[-1], 0)
            if ret >= 1 << 63:
                continue  # an error (EAGAIN): nothing accepted
            if not established:
                unmatched_accepts += 1
                continue
            open_fds[ret] = [established.pop(0), t, None]
        elif ev.startswith("syscalls:sys_enter_"):
            fd_m = re.search(r"fd: (0x[0-9a-f]+)", rest)
            if not fd_m:
                continue
            fd = int(fd_m.group(1), 16)
            c = open_fds.get(fd)
            if c is None:
                continue
            if ev == "syscalls:sys_enter_close":
                if c[2] is not None:
                    done.append(c)
                del open_fds[fd]
            elif c[2] is None:
                c[2] = t
    queued = [c[1] - c[0] for c in done]
    answered = [c[2] - c[1] for c in done]
    total = [c[2] - c[0] for c in done]
    label = f"{a.label}: " if a.label else ""
    print(f"{label}queued (established -> accept)   {percentiles(queued)}")
    print(f"{label}answered (accept -> response)    {percentiles(answered)}")
    print(f"{label}total (established -> response)  {percentiles(total)}")
    for comm, ws in sorted(waits.items(), key=lambda kv: -sum(kv[1]))[:8]:
        print(f"{label}waits for a core, {comm:<16} {percentiles(ws)} total={sum(ws):.2f} s")
    if unmatched_accepts or established:
        print(f"{label}(unmatched: {unmatched_accepts} accepts, {len(established)} connections never accepted in the trace)",
              file=sys.stderr)


if __name__ == "__main__":
    main()
