#!/usr/bin/env python3
"""Footprint of `chengis serve`, as an operator meets it.

For each run, on a new data directory and SQLite database:
- fresh start: from spawning `chengis serve` until `GET /ready` answers 200;
- builtins pinned: until `/ready` says the builtin plugins are pinned (a server without that
  field pins them before it answers, so then this is the fresh start);
- idle RSS (VmRSS, and RssAnon: the part that is not the binary's own pages) 2 s after the
  builtins are pinned;
- restart: the same server stopped (SIGTERM) and started again on the same data, until
  `/ready` answers; idle RSS 2 s later;
- idle RSS 1 s after one password sign-in (`POST /api/v1/login`, argon2id).

Usage: scripts/footprint.py [BINARY] [--runs N]   (BINARY defaults to target/release/chengis)
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

PASSWORD = "footprint-password-1"


def rss_mb(pid):
    """VmRSS and, of it, RssAnon (the heap and stacks; the rest is the binary's pages), in MB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon"):
                found[key] = int(line.split()[1]) / 1024
    return found.get("VmRSS", float("nan")), found.get("RssAnon", float("nan"))


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return None, None


def start(binary, data, db):
    env = dict(os.environ, CHENGIS_ADMIN_PASSWORD=PASSWORD, CHENGIS_LOG=os.environ.get("CHENGIS_LOG", "warn"))
    env.pop("CHENGIS_MASTER_KEY", None)
    t0 = time.monotonic()
    p = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data, "--database-url", db],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    line = p.stdout.readline().strip()
    prefix = "chengis listening on "
    if not line.startswith(prefix):
        p.kill()
        sys.exit(f"unexpected first line: {line!r}")
    url = line[len(prefix):]
    while True:
        status, body = get(f"{url}/ready")
        if status == 200:
            return p, url, time.monotonic() - t0, t0, body
        time.sleep(0.005)


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def one_run(binary):
    with tempfile.TemporaryDirectory(prefix="chengis-footprint-") as tmp:
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        db = f"sqlite://{os.path.join(tmp, 'db.sqlite')}"
        p, url, fresh, t0, body = start(binary, data, db)
        while body is not None and (body.get("plugins") or {}).get("status") == "compiling":
            time.sleep(0.05)
            _, body = get(f"{url}/ready")
        pinned = time.monotonic() - t0
        time.sleep(2)
        rss_first = rss_mb(p.pid)
        stop(p)
        p, url, restart, _, _ = start(binary, data, db)
        time.sleep(2)
        rss_restart = rss_mb(p.pid)
        req = urllib.request.Request(
            f"{url}/api/v1/login",
            data=json.dumps({"username": "admin", "password": PASSWORD}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 201, r.status
        time.sleep(1)
        rss_signin = rss_mb(p.pid)
        stop(p)
        return fresh, pinned, rss_first, restart, rss_restart, rss_signin


def main():
    args = sys.argv[1:]
    runs = 3
    if "--runs" in args:
        i = args.index("--runs")
        runs = int(args[i + 1])
        del args[i : i + 2]
    binary = args[0] if args else "target/release/chengis"
    print(f"{binary}: {os.path.getsize(binary) / 1e6:.1f} MB")
    print("RSS as VmRSS (RssAnon) in MB")
    print("run  fresh start  builtins pinned  idle RSS first  restart  idle RSS restart  RSS after sign-in")
    for n in range(runs):
        fresh, pinned, first, restart, rss_restart, signin = one_run(binary)
        rss = lambda r: f"{r[0]:.1f} ({r[1]:.1f})"
        print(
            f"{n + 1:>3}  {fresh * 1000:>8.0f} ms  {pinned:>13.2f} s  {rss(first):>14}"
            f"  {restart * 1000:>4.0f} ms  {rss(rss_restart):>16}  {rss(signin):>17}"
        )


if __name__ == "__main__":
    main()
