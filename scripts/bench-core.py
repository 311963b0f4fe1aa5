#!/usr/bin/env python3
"""Reference for benches/core.rs: wechatpy 1.8.18 doing the same work in process.

Plaintext: check the signature, parse the message, render a text reply.
Safe mode: check the signature, verify msg_signature and decrypt, parse, render,
encrypt and sign the reply. Prints microseconds per message (best of 5 runs).
"""
import sys
import time

from wechatpy import parse_message, create_reply
from wechatpy.crypto import WeChatCrypto
from wechatpy.utils import check_signature

TOKEN = "4yN275N7g3cY7t2znnG7U7h4MbU7wT42"
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wx0123456789abcdef"
TS, NONCE = "1700000000", "1234567890"
BODY = ("<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA["
        "oFollower0000000000000000001]]></FromUserName><CreateTime>1700000000</CreateTime>"
        "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content>"
        "<MsgId>24000001700000000</MsgId></xml>")


def signature(*parts):
    import hashlib
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


SIG = signature(TOKEN, TS, NONCE)
crypto = WeChatCrypto(TOKEN, KEY, APPID)
envelope = crypto.encrypt_message(BODY, NONCE, TS)  # wechatpy's own envelope
import xmltodict  # wechatpy depends on it
enc = xmltodict.parse(envelope)["xml"]
MSG_SIG = enc["MsgSignature"]
ENVELOPE = "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><Encrypt><![CDATA[%s]]></Encrypt></xml>" % enc["Encrypt"]


def plaintext():
    check_signature(TOKEN, SIG, TS, NONCE)
    msg = parse_message(BODY)
    return create_reply("Hello!", msg).render()


def safe():
    check_signature(TOKEN, SIG, TS, NONCE)
    xml = crypto.decrypt_message(ENVELOPE, MSG_SIG, TS, NONCE)
    msg = parse_message(xml)
    return crypto.encrypt_message(create_reply("Hello!", msg).render(), NONCE, TS)


def per_call_us(fn, n):
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


assert "Hello!" in plaintext()
assert "<Encrypt>" in safe()
n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
print("wechatpy plaintext message -> reply: %.2f us" % per_call_us(plaintext, n))
print("wechatpy safe-mode round trip:       %.2f us" % per_call_us(safe, n))
print("wechatpy parse_message only:         %.2f us" % per_call_us(lambda: parse_message(BODY), n))
print("wechatpy decrypt_message only:       %.2f us" % per_call_us(
    lambda: crypto.decrypt_message(ENVELOPE, MSG_SIG, TS, NONCE), n))
