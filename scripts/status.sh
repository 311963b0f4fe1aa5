#!/usr/bin/env bash
# One-screen summary of a running wechat-fcgi, read from its status path through the
# web server ([server] status_path; README, Operations). Needs curl and python3.
#   scripts/status.sh [URL]     default http://127.0.0.1/wechat-status
set -euo pipefail
url="${1:-http://127.0.0.1/wechat-status}"
json=$(curl -fsS --max-time 5 "$url") || { echo "cannot read $url" >&2; exit 1; }
python3 - "$json" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
up = s["start since"]
print(f"wechat-fcgi {s['version']}  pid {s['pid']}  up {up // 86400}d {up % 86400 // 3600}h {up % 3600 // 60}m")
print(f"connections: {s['active connections']} open ({s['idle connections']} idle), "
      f"max seen {s['max active connections']} of {s['max connections']}, accepted {s['accepted conn']}")
print(f"requests: {s['requests total']}  slow: {s['slow requests']}  "
      f"mean latency: {1000 * s['latency_seconds_sum'] / max(s['requests total'], 1):.2f} ms")
by_status = {}
for r in s["requests"]:
    by_status[r["status"]] = by_status.get(r["status"], 0) + r["count"]
print("  by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items())))
answers = {k: v for k, v in s["answers"].items() if v}
print("answers: " + (", ".join(f"{k}: {v}" for k, v in answers.items()) or "none"))
p = s["programs"]
print(f"programs: {p['answered']} answered, {p['failed']} failed, {p['timeout']} timed out; "
      f"pushes: {s['pushes']['ok']} ok, {s['pushes']['failed']} failed")
archive = s.get("archive")
extra = f"archive: {archive['written']} written, {archive['lost']} lost; " if archive else ""
print(f"{extra}store errors: {s['store errors']}; log lines dropped: {s['log lines dropped']}; "
      f"reloads: {s['config reloads']} ({s['config reload failures']} failed)")
PY
