//! The benchmark's ceiling: a FastCGI responder that does nothing. It reads records with
//! the project's codec and, when a request's STDIN ends, answers with fixed bytes (the
//! reply XML given as the second argument). No signature check, no parsing, no log, no
//! timeouts: what any FastCGI program behind the same nginx can reach at most.
//!
//! Usage: null_responder 127.0.0.1:PORT REPLY_FILE   (scripts/bench.py runs it)

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wechat_fcgi::fcgi::record;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().expect("usage: null_responder ADDR REPLY_FILE");
    let reply = std::fs::read(args.next().expect("usage: null_responder ADDR REPLY_FILE"))?;
    let mut stdout =
        b"Status: 200 OK\r\nContent-Type: application/xml; charset=utf-8\r\n\r\n".to_vec();
    stdout.extend_from_slice(&reply);
    let stdout: &'static [u8] = stdout.leak();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        loop {
            let (mut s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(4096);
                let mut out = Vec::new();
                loop {
                    match s.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let mut used = 0;
                    while let Ok(Some((rec, len))) = record::decode(&buf[used..]) {
                        used += len;
                        if rec.record_type == record::STDIN && rec.content.is_empty() {
                            record::write_stream(&mut out, record::STDOUT, rec.request_id, stdout);
                            record::write_end_request(&mut out, rec.request_id, 0, 0);
                        }
                    }
                    buf.drain(..used);
                    if !out.is_empty() {
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                }
            });
        }
    })
}
