#!/bin/sh
# A reply program that answers with JSON (any reply type, same shape as in the config
# file): a one-article news reply whose title echoes the follower's text.
#   [[rule]]
#   prefix = "news "
#   run = { command = ["/path/to/scripts/examples/echo-news.sh"] }
set -eu
msg=$(cat)
# The message JSON has WeChat's field names; take "Content" with sed (no jq needed).
content=$(printf '%s' "$msg" | sed -n 's/.*"Content":"\(\([^"\\]\|\\.\)*\)".*/\1/p')
printf '{"news":[{"title":"You said: %s","description":"Echoed by a program","url":"https://example.com/"}]}\n' "$content"
