"""Start one command as N processes of a `jax.distributed` run on this machine (CPU collectives on 127.0.0.1).

    python scripts/tools/launch.py --processes 2 -- \
        python scripts/tools/ensemble.py --seeds 64 --out results/ens

Each process gets SHARPFLOW_COORDINATOR, SHARPFLOW_NUM_PROCESSES and SHARPFLOW_PROCESS_ID, which
`analysis.ensembles.init_processes()` reads. Across machines, start the command once on each machine with
those three variables set by hand (the coordinator is host:port of process 0, reachable from every machine)
and --out on a file system they all see; see the README. Exits with the first non-zero exit status.
"""

import argparse
import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2, help="number of processes (default 2)")
    p.add_argument(
        "--port", type=int, default=None, help="coordinator port on 127.0.0.1 (default: a free one)"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command given (put it after --)")
    if args.processes < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    coordinator = f"127.0.0.1:{args.port or free_port()}"
    procs = []
    for i in range(args.processes):
        env = dict(os.environ, SHARPFLOW_COORDINATOR=coordinator, SHARPFLOW_NUM_PROCESSES=str(args.processes))
        procs.append(subprocess.Popen(command, env=dict(env, SHARPFLOW_PROCESS_ID=str(i))))
    codes = [proc.wait() for proc in procs]
    sys.exit(next((c for c in codes if c), 0))


if __name__ == "__main__":
    main()
