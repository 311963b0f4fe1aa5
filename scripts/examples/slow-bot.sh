#!/bin/sh
# A slow reply program: stands in for a chatbot or a language model that needs longer
# than WeChat's 5 s. It reads the message JSON on stdin and prints the reply.
#   run = { command = ["../scripts/examples/slow-bot.sh"], timeout_ms = 60000 }
# With [late] mode = "hold" (the default), the follower gets the answer inline when it
# is ready within about 14 s, else "pending" and the answer on their next "1".
input=$(cat)
content=$(printf '%s' "$input" | sed -n 's/.*"Content": *"\([^"]*\)".*/\1/p')
sleep "${SLOW_BOT_SECONDS:-8}"
echo "You said: $content (thought about it for ${SLOW_BOT_SECONDS:-8} s)"
