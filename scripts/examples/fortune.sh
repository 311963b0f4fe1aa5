#!/bin/sh
# A reply program for wechat-fcgi: answers with a random line of fortunes.txt (next to
# this script). The message arrives as JSON on stdin; this one does not need it.
# Use it in the config:
#   [[rule]]
#   text = ["fortune", "运势"]
#   run = { command = ["/path/to/scripts/examples/fortune.sh"], timeout_ms = 2000 }
set -eu
here=$(dirname "$0")
cat >/dev/null                      # read (and ignore) the message
# Pick a random non-empty line, seeded from the kernel's random source.
seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
awk -v seed="$seed" '
    NF { lines[n++] = $0 }
    END { srand(seed); if (n) print lines[int(rand() * n)] }
' "$here/fortunes.txt"
