#!/usr/bin/env python3
"""Throughput and latency of wechat-fcgi behind nginx, next to nginx answering the same
bytes by itself (`return 200`), in the same run. See README "Performance".

Usage: scripts/bench.sh [--quick] [--only=plain,safe:1024,plain@sqlite,plain@redis]
(DURATION=seconds ROUNDS=n override; @STORE picks the [state] store: memory, sqlite, redis;
@archive: the memory store with [archive] on (@archive-tmpfs: the archive in /dev/shm,
its cost without the disk's); @metrics: the memory store with the
status page on, every request counted)
"""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/wechat-fcgi")
BODIES = os.path.join(ROOT, "target/release/examples/bench_bodies")
DEFAULT_CACHE = 57344  # retry_cache_entries' default
NULL = os.path.join(ROOT, "target/release/examples/null_responder")
STATIC_BIN = os.environ.get("STATIC_BIN")  # set by bench.sh: the crt-static build
QUICK = "--quick" in sys.argv
DURATION = int(os.environ.get("DURATION", "3" if QUICK else "5"))
ROUNDS = int(os.environ.get("ROUNDS", "1" if QUICK else "3"))
TOKEN = "4yN275N7g3cY7t2znnG7U7h4MbU7wT42"
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wx0123456789abcdef"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("port %d never opened" % port)


def peak_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    """User + system CPU time a process has used so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def wrk(url, conns, bench_dir, path, offset=0, duration=None):
    env = dict(os.environ, BENCH_DIR=bench_dir, BENCH_PATH=path, BENCH_OFFSET=str(offset))
    out = subprocess.run(
        ["wrk", "-t1", "-c%d" % conns, "-d%ds" % (duration or DURATION), "--latency", "--timeout", "5s",
         "-s", os.path.join(ROOT, "scripts/bench.lua"), url],
        capture_output=True, text=True, env=env, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": rps,
        "p50": to_ms(lat["50"]),
        "p99": to_ms(lat["99"]),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "sockerr": sum(int(x) for x in sock.groups()) if sock else 0,
    }


def start_redis(directory):
    """A redis-server on a free loopback port, as the Redis store's benchmark needs."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", directory],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


class Stack:
    """wechat-fcgi + nginx for one mode, content size and store."""

    def __init__(self, mode, content_bytes, conns_max, store="memory"):
        self.dir = tempfile.mkdtemp(prefix="wechat-fcgi-bench-")
        self.mode = mode
        self.sent = 0
        self.redis = None
        state = ""
        if store == "sqlite":
            state = '[state]\nstore = "sqlite:%s"\n' % os.path.join(self.dir, "state.db")
        elif store == "redis":
            self.redis, redis_port = start_redis(self.dir)
            state = '[state]\nstore = "redis://127.0.0.1:%d/0"\n' % redis_port
        elif store == "archive":  # the memory store, and every message archived (synced)
            state = '[archive]\nto = "jsonl:%s"\n' % os.path.join(self.dir, "messages.jsonl")
        elif store == "archive-tmpfs":  # the same in memory (/dev/shm): the archive's own
            # cost without the disk's (fdatasync returns at once on tmpfs)
            self.shm = tempfile.mkdtemp(prefix="wechat-fcgi-bench-", dir="/dev/shm")
            state = '[archive]\nto = "jsonl:%s"\n' % os.path.join(self.shm, "messages.jsonl")
        # @metrics: the memory store with the status page on (every request counted).
        status = 'status_path = "/wechat-status"\n' if store == "metrics" else ""
        cfg = os.path.join(self.dir, "wechat-fcgi.toml")
        # Large bodies: a smaller cache, so that the bodies wrk holds stay in memory.
        cache = DEFAULT_CACHE if content_bytes <= 1024 else 4096
        with open(cfg, "w") as f:
            # A long soak outlives the default 300 s window of the signed timestamp.
            f.write('[server]\nmax_connections = 4096\nmax_body_bytes = 1048576\ntimestamp_window_secs = 7200\n'
                    'retry_cache_entries = %d\n%s[account]\ntoken = "%s"\n' % (cache, status, TOKEN))
            if mode == "safe":
                f.write('appid = "%s"\nmode = "safe"\nencoding_aes_key = "%s"\n' % (APPID, KEY))
            f.write('[[rule]]\ntext = "hi"\nreply = { text = "Hello! Thanks for your message." }\n')
            f.write(state)
        # More distinct messages than the retry cache holds, cycled in order: every request
        # is a message the server has not answered yet (at steady state the cache is full
        # and evicts the oldest), never a retry served from the cache.
        # A shared store (SQLite, Redis) evicts nothing within the retention: enough
        # distinct messages for the whole run, so that none comes back as a retry.
        n = cache * 5 // 4 if store in ("memory", "archive", "archive-tmpfs", "metrics") else int(os.environ.get("BENCH_MESSAGES", "400000"))
        subprocess.run([BODIES, mode, str(n), str(content_bytes), self.dir], check=True)
        self.fcgi_port = free_port()
        self.log = open(os.path.join(self.dir, "wechat-fcgi.log"), "w")
        self.server = subprocess.Popen(
            [BIN, "serve", "--config", cfg, "--listen", "tcp:127.0.0.1:%d" % self.fcgi_port],
            stdout=subprocess.DEVNULL, stderr=self.log, env=dict(os.environ, WECHAT_FCGI_LOG=os.environ.get("WECHAT_FCGI_LOG", "info")))
        wait_port(self.fcgi_port)
        self.port = free_port()
        # Capture one real reply: the reference answers with the same bytes.
        self.nginx_conf(reply="placeholder", conns=conns_max)
        self.nginx = subprocess.Popen(["nginx", "-p", self.dir, "-c", os.path.join(self.dir, "nginx.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        body = open(os.path.join(self.dir, "bodies.txt")).readline().strip().encode()
        query = open(os.path.join(self.dir, "queries.txt")).readline().strip()
        req = urllib.request.Request("http://127.0.0.1:%d/wechat?%s" % (self.port, query), data=body,
                                     headers={"Content-Type": "text/xml"})
        reply = urllib.request.urlopen(req).read().decode()
        assert reply.startswith("<xml>"), reply
        self.reply_len = len(reply.encode())
        # The ceiling: a do-nothing FastCGI responder answering the same bytes.
        with open(os.path.join(self.dir, "reply.xml"), "w") as f:
            f.write(reply)
        self.null_port = free_port()
        self.null = subprocess.Popen([NULL, "127.0.0.1:%d" % self.null_port, os.path.join(self.dir, "reply.xml")])
        wait_port(self.null_port)
        self.nginx_conf(reply=reply, conns=conns_max)
        os.kill(self.nginx.pid, signal.SIGHUP)
        time.sleep(0.5)

    def nginx_conf(self, reply, conns):
        d = self.dir
        user = "user root;" if os.geteuid() == 0 else ""
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write("""%(user)s
worker_processes 1;
worker_rlimit_nofile 8192;
daemon off;
pid %(d)s/nginx.pid;
error_log %(d)s/nginx-error.log warn;
events { worker_connections %(wc)d; }
http {
    access_log off;
    client_body_temp_path %(d)s/cb; fastcgi_temp_path %(d)s/ft; proxy_temp_path %(d)s/pt;
    scgi_temp_path %(d)s/st; uwsgi_temp_path %(d)s/ut;
    upstream wechat_fcgi { server 127.0.0.1:%(fp)d; keepalive 1024; }
    upstream null_fcgi { server 127.0.0.1:%(np)d; keepalive 1024; }
    server {
        listen 127.0.0.1:%(port)d backlog=4096;
        client_max_body_size 1m;
        client_body_buffer_size 32k;
        location = /wechat {
            fastcgi_pass wechat_fcgi;
            fastcgi_keep_conn on;
            include /etc/nginx/fastcgi_params;
        }
        location = /null {
            fastcgi_pass null_fcgi;
            fastcgi_keep_conn on;
            include /etc/nginx/fastcgi_params;
        }
        location = /static {
            default_type "application/xml; charset=utf-8";
            return 200 '%(reply)s';
        }
    }
}
""" % {"user": user, "d": d, "wc": conns * 3 + 64, "fp": self.fcgi_port, "np": getattr(self, "null_port", 1), "port": self.port, "reply": reply})

    def run(self, target, conns, duration=None):
        # Each run on /wechat goes on where the last one stopped in the list of messages
        # (plus the requests in flight when wrk stopped), so none is sent twice.
        upstream = {"wechat": self.server, "null": getattr(self, "null", None)}.get(target)
        cpu = cpu_seconds(upstream.pid) if upstream else 0
        r = wrk("http://127.0.0.1:%d/%s" % (self.port, target), conns, self.dir, "/" + target, self.sent,
                duration)
        # CPU the upstream process spent per request: steadier than req/s on a shared
        # machine, and the cost that matters on a small VPS.
        r["cpu_us"] = (cpu_seconds(upstream.pid) - cpu) * 1e6 / max(1, r["requests"]) if upstream else 0
        if target == "wechat":
            self.sent += r["requests"] + conns
        return r

    def rss_kib(self):
        return peak_rss_kib(self.server.pid)

    def close(self):
        self.nginx.send_signal(signal.SIGQUIT)
        self.server.send_signal(signal.SIGTERM)
        if getattr(self, "null", None):
            self.null.kill()
            self.null.wait(10)
        self.nginx.wait(10)
        self.server.wait(10)
        if self.redis:
            self.redis.terminate()
            self.redis.wait(10)
        self.log.close()
        counts = {"warns": 0, "cache_full": 0, "retries": 0, "answered": 0}
        for line in open(os.path.join(self.dir, "wechat-fcgi.log")):
            if "retry cache full" in line:
                counts["cache_full"] += 1  # expected: the load is made of fresh messages
            elif " WARN " in line or " ERROR " in line:
                counts["warns"] += 1
            elif " outcome=" in line:
                counts["answered"] += 1
                counts["retries"] += "via=retry" in line
        shutil.rmtree(self.dir, ignore_errors=True)
        if getattr(self, "shm", None):
            shutil.rmtree(self.shm, ignore_errors=True)
        return counts


def sync_us(directory, n=300):
    """The disk's own cost of what the archive does per batch: median wall time of
    appending a 4 KiB line and fdatasync, in the directory the archive writes to."""
    path = os.path.join(directory, "sync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"x" * 4095 + b"\n")
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times)


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def compare(mode, conns=32, content_bytes=2, rounds=ROUNDS, store="memory"):
    st = Stack(mode, content_bytes, max(conns, 32), store)
    try:
        st.run("wechat", conns)  # warm-up
        proj, ref, null = [], [], []
        for _ in range(rounds):
            proj.append(st.run("wechat", conns))
            ref.append(st.run("static", conns))
            null.append(st.run("null", conns))
        rss = st.rss_kib()
        # For the archive: the disk's sync time, next to the rounds that paid for it.
        disk_sync = sync_us(st.dir) if store == "archive" else None
    finally:
        log = st.close()
    row = {
        "mode": mode if store == "memory" else "%s@%s" % (mode, store), "conns": conns, "content": content_bytes,
        "rps": median(proj, "rps"), "ref_rps": median(ref, "rps"),
        "p50": median(proj, "p50"), "p99": median(proj, "p99"),
        "ref_p99": median(ref, "p99"),
        "null_rps": median(null, "rps"), "null_p99": median(null, "p99"),
        "cpu_us": median(proj, "cpu_us"), "null_cpu_us": median(null, "cpu_us"),
        "non2xx": sum(r["non2xx"] for r in proj), "sockerr": sum(r["sockerr"] for r in proj),
        "rss_mib": rss / 1024, "warns": log["warns"],
        "retry_share": log["retries"] / max(1, log["answered"]),
    }
    row["ratio"] = row["rps"] / row["ref_rps"]
    row["null_ratio"] = row["null_rps"] / row["ref_rps"]
    print("%-5s c=%-5d content=%-6d  %6.0f req/s  ref %6.0f req/s  ratio %.2f  (do-nothing responder %6.0f req/s,"
          " ratio %.2f, p99 %.2f ms, CPU %.1f us/req)  CPU %.1f us/req  p50 %.2f ms  p99 %.2f ms (ref p99 %.2f)"
          "  non2xx %d  sockerr %d  peak RSS %.1f MiB  warnings %d  answered from the retry cache %.1f%%" % (
              row["mode"], conns, content_bytes, row["rps"], row["ref_rps"], row["ratio"], row["null_rps"],
              row["null_ratio"], row["null_p99"], row["null_cpu_us"], row["cpu_us"], row["p50"], row["p99"],
              row["ref_p99"], row["non2xx"], row["sockerr"], row["rss_mib"], row["warns"],
              100 * row["retry_share"]), flush=True)
    if disk_sync is not None:
        print("      the disk, same directory: append 4 KiB + fdatasync, median %.0f us" % disk_sync, flush=True)
    return row


def cgi_figure(binary, label, n=200, store="memory"):
    """Wall time and peak RSS per request of the binary run as a CGI program, next to
    spawning /bin/true the same way (the cost any CGI program pays)."""
    d = tempfile.mkdtemp(prefix="wechat-fcgi-cgi-")
    cfg = os.path.join(d, "c.toml")
    with open(cfg, "w") as f:
        f.write('[account]\ntoken = "%s"\n[[rule]]\ntext = "hi"\nreply = { text = "Hello!" }\n' % TOKEN)
        if store == "sqlite":
            f.write('[state]\nstore = "sqlite:%s"\n' % os.path.join(d, "state.db"))
            label += ", sqlite store"
    # Every request a new message, as WeChat sends them (with a shared store each one is
    # bound and stored, not answered from what an earlier request stored).
    total = 3 * n + 1  # three rounds, and one request to check the setup
    subprocess.run([BODIES, "plain", str(total), "2", d], check=True)
    queries = open(os.path.join(d, "queries.txt")).read().split()
    for i, body in enumerate(open(os.path.join(d, "bodies.txt")).read().split("\n")[:total]):
        with open(os.path.join(d, "body.%d" % i), "w") as f:
            f.write(body)
    with open(os.path.join(d, "queries.sh"), "w") as f:
        f.write("Q=(%s)\n" % " ".join("'%s'" % q for q in queries))
        f.write("L=(%s)\n" % " ".join(str(os.path.getsize(os.path.join(d, "body.%d" % i))) for i in range(total)))
    body_file = os.path.join(d, "body.%d" % (total - 1))
    env = {"GATEWAY_INTERFACE": "CGI/1.1", "REQUEST_METHOD": "POST", "QUERY_STRING": queries[total - 1],
           "CONTENT_LENGTH": str(os.path.getsize(body_file)), "WECHAT_FCGI_CONFIG": cfg,
           "WECHAT_FCGI_LOG": "info", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([binary], stdin=open(body_file), env=env, capture_output=True).stdout
    assert b"Hello!" in out, out

    def loop(program, first):
        # The same loop for every program: each run gets its own query and body.
        script = ('source "%s/queries.sh"; for ((i = %d; i < %d; i++)); do '
                  'QUERY_STRING="${Q[$i]}" CONTENT_LENGTH="${L[$i]}" "%s" < "%s/body.$i" > /dev/null 2>&1; done'
                  % (d, first, first + n, program, d))
        t = time.perf_counter()
        subprocess.run(["bash", "-c", script], env=env, check=True)
        return (time.perf_counter() - t) * 1000 / n

    def peak_kib(program):
        r = subprocess.run(["/usr/bin/time", "-f", "%M", program], stdin=open(body_file), env=env,
                           capture_output=True, text=True)
        return int(r.stderr.strip().splitlines()[-1])

    true_ms, cgi_ms = [], []
    for r in range(3):
        true_ms.append(loop("/bin/true", r * n))
        cgi_ms.append(loop(binary, r * n))
    peak = max(peak_kib(binary) for _ in range(5))
    true_peak = peak_kib("/bin/true")
    shutil.rmtree(d, ignore_errors=True)
    print("cgi (%s build) %d runs x3: %.2f ms per request (spawning /bin/true: %.2f ms), peak RSS %.1f MiB (/bin/true: %.1f MiB)" % (
        label, n, statistics.median(cgi_ms), statistics.median(true_ms), peak / 1024, true_peak / 1024), flush=True)


def soak(total, conns):
    """Run `total` requests at `conns` connections; RSS sampled every 10 s must stay flat."""
    st = Stack("plain", 2, conns)
    ok = True
    try:
        st.run("wechat", conns)  # warm-up: the retry cache fills, buffers settle
        samples, done, errors = [], 0, 0
        chunk_s = 10
        while done < total:
            r = st.run("wechat", conns, chunk_s)
            errors += r["non2xx"] + r["sockerr"]
            done += r["requests"]
            with open("/proc/%d/status" % st.server.pid) as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            samples.append(rss)
            print("soak: %9d requests, %d errors, RSS %.1f MiB" % (done, errors, rss / 1024), flush=True)
        # Flat: the last sample is within 10% (or 1 MiB) of the first after warm-up.
        growth = samples[-1] - samples[0]
        flat = growth <= max(1024, samples[0] // 10)
        print("soak: %d requests, %d errors, RSS %.1f -> %.1f MiB (%s)" % (
            done, errors, samples[0] / 1024, samples[-1] / 1024, "flat" if flat else "GROWING"), flush=True)
        ok = errors == 0 and flat
    finally:
        st.close()
    if not ok:
        raise SystemExit(1)


def main():
    if "--soak" in sys.argv:
        soak(int(os.environ.get("SOAK_REQUESTS", "1000000")), int(os.environ.get("SOAK_CONNS", "256")))
        return
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            raise SystemExit("%s not found: scripts/bench.sh installs it" % tool)
    print("# %s, %d round(s) of %d s each, wrk -t1; ratio = wechat-fcgi / nginx return 200, same run" % (
        time.strftime("%Y-%m-%d %H:%M"), ROUNDS, DURATION), flush=True)
    only = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")]
    if only:  # e.g. --only=plain,safe:1024: these variants (connections after ':'), nothing else
        for variant in only[0].split(","):
            if variant.startswith("cgi"):  # cgi or cgi@sqlite: the dynamic and the static build
                for binary, label in ((BIN, "dynamic"), (STATIC_BIN, "static")):
                    if binary:
                        cgi_figure(binary, label, 50 if QUICK else 200, variant.partition("@")[2] or "memory")
                continue
            variant, _, conns = variant.partition(":")
            mode, _, store = variant.partition("@")
            compare(mode, conns=int(conns or 32), rounds=ROUNDS if not conns else 1, store=store or "memory")
        return
    compare("plain")
    compare("safe")
    compare("plain", store="metrics")
    compare("plain", store="archive")
    compare("plain", store="sqlite")
    compare("plain", store="redis")
    if not QUICK:
        for c in (256, 1024):
            compare("plain", conns=c, rounds=1)
        compare("plain", content_bytes=100, rounds=1)
        compare("plain", content_bytes=16384, rounds=1)
        compare("safe", content_bytes=16384, rounds=1)
    cgi_figure(BIN, "dynamic", 50 if QUICK else 200)
    cgi_figure(BIN, "dynamic", 50 if QUICK else 200, "sqlite")
    if STATIC_BIN:
        cgi_figure(STATIC_BIN, "static", 50 if QUICK else 200)
        cgi_figure(STATIC_BIN, "static", 50 if QUICK else 200, "sqlite")


if __name__ == "__main__":
    main()
