//! Hostile FastCGI input, as one table over raw records sent to the real server: each
//! row has a defined outcome, and the server keeps serving (a probe request answered on
//! the same connection when it stays open, and on a new connection after every row).
//! Also: slow-loris, the connection cap, a peer that resets, allowed_clients, and
//! HTTP-level hostile bodies through nginx.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use wechat_fcgi::fcgi::{params, record};

/// What came back on a connection, in order, until EOF.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    /// STDOUT then END_REQUEST: an HTTP response with this status.
    Resp(u16, u16),
    /// END_REQUEST without output, with this protocol status.
    End(u16, u8),
    /// UNKNOWN_TYPE naming this record type.
    Unknown(u8),
}

fn params_of(method: &str, query: &str, content_length: Option<usize>) -> Vec<u8> {
    let mut p = Vec::new();
    params::write_pair(&mut p, b"REQUEST_METHOD", method.as_bytes());
    params::write_pair(&mut p, b"QUERY_STRING", query.as_bytes());
    if let Some(n) = content_length {
        params::write_pair(&mut p, b"CONTENT_LENGTH", n.to_string().as_bytes());
    }
    p
}

/// A complete request: BEGIN, PARAMS (one record + end), STDIN (+ end).
fn request(out: &mut Vec<u8>, id: u16, keep: bool, method: &str, query: &str, body: &[u8]) {
    begin(out, id, record::ROLE_RESPONDER, u8::from(keep));
    record::write_stream(
        out,
        record::PARAMS,
        id,
        &params_of(method, query, Some(body.len())),
    );
    record::write_stream(out, record::STDIN, id, body);
}

fn handshake(out: &mut Vec<u8>, id: u16, keep: bool) {
    request(
        out,
        id,
        keep,
        "GET",
        &format!("{}&echostr=ok", signed("1")),
        b"",
    );
}

fn text_post(out: &mut Vec<u8>, id: u16, keep: bool) {
    let body =
        wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", u64::from(id) + 1_000);
    request(out, id, keep, "POST", &signed("2"), body.as_bytes());
}

/// Read records until EOF; fold them into what the client saw.
fn read_all(s: &mut TcpStream) -> Vec<Got> {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut got = Vec::new();
    let mut stdout: std::collections::HashMap<u16, Vec<u8>> = Default::default();
    let (records, pos) = decode_records(&buf);
    for (kind, id, content) in records {
        match kind {
            record::STDOUT => stdout.entry(id).or_default().extend_from_slice(&content),
            record::END_REQUEST => match stdout.remove(&id) {
                Some(out) => {
                    let status = String::from_utf8_lossy(&out[8..11]).parse().unwrap_or(0);
                    got.push(Got::Resp(id, status));
                }
                None => got.push(Got::End(id, content[4])),
            },
            record::UNKNOWN_TYPE => got.push(Got::Unknown(content[0])),
            other => panic!("unexpected record type {other}"),
        }
    }
    assert_eq!(pos, buf.len(), "trailing partial record from the server");
    got
}

enum Delivery {
    /// One write, then a probe request (id 99, no keep-conn) so the server closes.
    WithProbe,
    /// One write, then we close our writing side (EOF mid-stream).
    ThenEof,
    /// One byte per write, then the probe.
    ByteAtATime,
}

const PROBE: Got = Got::Resp(99, 200);

fn table() -> Vec<(&'static str, Vec<u8>, Delivery, Vec<Got>)> {
    use Delivery::*;
    let mut rows = Vec::new();
    let mut b = Vec::new();
    text_post(&mut b, 1, true);
    rows.push((
        "good request",
        b.clone(),
        WithProbe,
        vec![Got::Resp(1, 200), PROBE],
    ));
    rows.push((
        "byte at a time",
        b.clone(),
        ByteAtATime,
        vec![Got::Resp(1, 200), PROBE],
    ));
    let good = b;

    let mut b = good.clone();
    b[0] = 2;
    rows.push(("record version 2", b, WithProbe, vec![]));

    rows.push(("truncated header", good[..5].to_vec(), ThenEof, vec![]));
    rows.push(("truncated content", good[..12].to_vec(), ThenEof, vec![]));
    rows.push((
        "truncated padding",
        good[..good.len() - 3].to_vec(),
        ThenEof,
        vec![],
    ));

    // A 65535-byte STDIN record (the largest, with one byte of padding) of junk body.
    let mut b = Vec::new();
    begin(&mut b, 1, record::ROLE_RESPONDER, 1);
    record::write_stream(
        &mut b,
        record::PARAMS,
        1,
        &params_of("POST", &signed("3"), Some(65535)),
    );
    record::write_record(&mut b, record::STDIN, 1, &vec![b'x'; 65535]);
    record::write_record(&mut b, record::STDIN, 1, &[]);
    rows.push((
        "content length 65535 with padding",
        b,
        WithProbe,
        vec![Got::Resp(1, 400), PROBE],
    ));

    let mut b = Vec::new();
    for id in 1..=50 {
        text_post(&mut b, id, true);
    }
    let mut want: Vec<Got> = (1..=50).map(|id| Got::Resp(id, 200)).collect();
    want.push(PROBE);
    rows.push(("50 pipelined requests in one write", b, WithProbe, want));

    for len in [0usize, 1, 7, 9] {
        let mut b = Vec::new();
        record::write_record(
            &mut b,
            record::BEGIN_REQUEST,
            1,
            &vec![0u8; len]
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 1 { 1 } else { 0 })
                .collect::<Vec<u8>>(),
        );
        let name: &'static str =
            Box::leak(format!("BEGIN_REQUEST with a {len}-byte body").into_boxed_str());
        rows.push((name, b, WithProbe, vec![]));
    }

    let mut b = Vec::new();
    begin(&mut b, 0, record::ROLE_RESPONDER, 1);
    rows.push((
        "BEGIN_REQUEST with request id 0",
        b,
        WithProbe,
        vec![Got::Unknown(record::BEGIN_REQUEST), PROBE],
    ));

    let mut b = Vec::new();
    begin(&mut b, 1, record::ROLE_RESPONDER, 1);
    let mut rest = Vec::new();
    text_post(&mut rest, 1, true);
    b.extend_from_slice(&rest);
    rows.push((
        "second BEGIN for an active id",
        b,
        WithProbe,
        vec![Got::Resp(1, 200), PROBE],
    ));

    let mut b = Vec::new();
    begin(&mut b, 1, record::ROLE_RESPONDER, 1);
    text_post(&mut b, 2, true);
    let mut finish = Vec::new();
    record::write_stream(
        &mut finish,
        record::PARAMS,
        1,
        &params_of("GET", &format!("{}&echostr=x", signed("4")), None),
    );
    record::write_stream(&mut finish, record::STDIN, 1, b"");
    b.extend_from_slice(&finish);
    rows.push((
        "BEGIN for another id while one is active",
        b,
        WithProbe,
        vec![Got::End(2, record::CANT_MPX_CONN), Got::Resp(1, 200), PROBE],
    ));

    for role in [record::ROLE_AUTHORIZER, record::ROLE_FILTER, 0, 77] {
        let mut b = Vec::new();
        begin(&mut b, 1, role, 1);
        let name: &'static str = Box::leak(format!("role {role}").into_boxed_str());
        rows.push((
            name,
            b,
            WithProbe,
            vec![Got::End(1, record::UNKNOWN_ROLE), PROBE],
        ));
    }

    let mut b = Vec::new();
    record::write_record(&mut b, 42, 0, b"");
    rows.push((
        "unknown type, id 0",
        b,
        WithProbe,
        vec![Got::Unknown(42), PROBE],
    ));
    let mut b = Vec::new();
    record::write_record(&mut b, 42, 3, b"abc");
    record::write_record(&mut b, record::STDOUT, 3, b"abc");
    rows.push((
        "unknown and server-only types, id 3",
        b,
        WithProbe,
        vec![PROBE],
    ));

    let mut b = Vec::new();
    record::write_stream(&mut b, record::PARAMS, 7, &params_of("GET", "", None));
    record::write_stream(&mut b, record::STDIN, 7, b"x");
    record::write_record(&mut b, record::ABORT_REQUEST, 7, b"");
    rows.push((
        "PARAMS, STDIN, ABORT for an id never begun",
        b,
        WithProbe,
        vec![PROBE],
    ));

    let mut b = Vec::new();
    begin(&mut b, 1, record::ROLE_RESPONDER, 1);
    record::write_record(&mut b, record::PARAMS, 1, &params_of("POST", "", None));
    record::write_record(&mut b, record::ABORT_REQUEST, 1, b"");
    record::write_record(&mut b, record::ABORT_REQUEST, 1, b"");
    record::write_stream(&mut b, record::STDIN, 1, b"late");
    rows.push((
        "ABORT for a running request, twice",
        b,
        WithProbe,
        vec![Got::End(1, record::REQUEST_COMPLETE), PROBE],
    ));

    for (what, lengths) in [
        (
            "4-byte name length 0x7FFFFFFF",
            vec![0xffu8, 0xff, 0xff, 0xff, 0x01, b'A', b'B'],
        ),
        (
            "4-byte value length past the record",
            vec![0x01, 0x80, 0x00, 0x10, 0x00, b'A', b'B'],
        ),
    ] {
        let mut b = Vec::new();
        begin(&mut b, 1, record::ROLE_RESPONDER, 1);
        record::write_stream(&mut b, record::PARAMS, 1, &lengths);
        record::write_stream(&mut b, record::STDIN, 1, b"");
        rows.push((what, b, WithProbe, vec![Got::Resp(1, 400), PROBE]));
    }

    // A pair whose 4-byte length is split across two PARAMS records.
    let mut p = Vec::new();
    let q = format!("{}&echostr=split{}", signed("5"), "x".repeat(200));
    params::write_pair(&mut p, b"QUERY_STRING", q.as_bytes());
    params::write_pair(&mut p, b"REQUEST_METHOD", b"GET");
    let mut b = Vec::new();
    begin(&mut b, 1, record::ROLE_RESPONDER, 1);
    // p[0] is the name length (12), p[1..5] the 4-byte value length: split at 3.
    assert_eq!(p[1] & 0x80, 0x80);
    record::write_record(&mut b, record::PARAMS, 1, &p[..3]);
    record::write_record(&mut b, record::PARAMS, 1, &p[3..]);
    record::write_record(&mut b, record::PARAMS, 1, b"");
    record::write_stream(&mut b, record::STDIN, 1, b"");
    rows.push((
        "pair split inside a 4-byte length",
        b,
        WithProbe,
        vec![Got::Resp(1, 200), PROBE],
    ));

    let mut b = Vec::new();
    begin(&mut b, 1, record::ROLE_RESPONDER, 1);
    let mut big = params_of("GET", "", None);
    params::write_pair(&mut big, b"HTTP_X_BIG", &vec![b'y'; 5000]);
    record::write_stream(&mut b, record::PARAMS, 1, &big);
    record::write_stream(&mut b, record::STDIN, 1, b"");
    rows.push((
        "params over max_params_bytes",
        b,
        WithProbe,
        vec![Got::Resp(1, 431), PROBE],
    ));

    let mut tiny = params_of("GET", &format!("{}&echostr=t", signed("6")), None);
    for i in 0..900u32 {
        params::write_pair(&mut tiny, &[b'A' + (i % 26) as u8], b"");
    }
    let mut b = Vec::new();
    begin(&mut b, 1, record::ROLE_RESPONDER, 1);
    record::write_stream(&mut b, record::PARAMS, 1, &tiny);
    record::write_stream(&mut b, record::STDIN, 1, b"");
    rows.push((
        "900 tiny pairs",
        b,
        WithProbe,
        vec![Got::Resp(1, 200), PROBE],
    ));

    for (what, declared, sent) in [
        ("STDIN longer than CONTENT_LENGTH", 10usize, 20usize),
        ("STDIN shorter than CONTENT_LENGTH", 20, 10),
    ] {
        let mut b = Vec::new();
        begin(&mut b, 1, record::ROLE_RESPONDER, 1);
        record::write_stream(
            &mut b,
            record::PARAMS,
            1,
            &params_of("POST", &signed("7"), Some(declared)),
        );
        record::write_stream(&mut b, record::STDIN, 1, &vec![b'<'; sent]);
        rows.push((what, b, WithProbe, vec![Got::Resp(1, 400), PROBE]));
    }

    let mut b = Vec::new();
    begin(&mut b, 1, record::ROLE_RESPONDER, 1);
    record::write_stream(
        &mut b,
        record::PARAMS,
        1,
        &params_of("POST", &signed("8"), Some(200_000)),
    );
    record::write_record(&mut b, record::STDIN, 1, &vec![b'z'; 1000]);
    record::write_record(&mut b, record::STDIN, 1, b"");
    rows.push((
        "CONTENT_LENGTH over max_body_bytes: the body is read and dropped, then 413",
        b,
        WithProbe,
        vec![Got::Resp(1, 413), PROBE],
    ));
    rows
}

fn server() -> (TempDir, Proc, std::net::SocketAddr) {
    let dir = TempDir::new("robust");
    let config = write_config(
        &dir,
        &format!(
            "[server]\nmax_params_bytes = 4096\nmax_body_bytes = 100000\nread_timeout_secs = 1\nidle_timeout_secs = 5\nmax_connections = 4\n{RULES}"
        ),
    );
    let (p, addr) = start_server(&dir, &config);
    (dir, p, addr)
}

#[test]
fn hostile_record_table() {
    let (_dir, server, addr) = server();
    for (what, bytes, delivery, want) in table() {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut probe = Vec::new();
        handshake(&mut probe, 99, false);
        match delivery {
            Delivery::WithProbe => {
                let mut all = bytes.clone();
                all.extend_from_slice(&probe);
                let _ = s.write_all(&all);
            }
            Delivery::ThenEof => {
                s.write_all(&bytes).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
            }
            Delivery::ByteAtATime => {
                for byte in bytes.iter().chain(&probe) {
                    s.write_all(std::slice::from_ref(byte)).unwrap();
                }
            }
        }
        let got = read_all(&mut s);
        assert_eq!(got, want, "{what}\n{}", server.log());
        // The server serves a new connection after every row.
        let mut fresh = TcpStream::connect(addr).unwrap();
        let mut p = Vec::new();
        handshake(&mut p, 5, false);
        fresh.write_all(&p).unwrap();
        assert_eq!(
            read_all(&mut fresh),
            vec![Got::Resp(5, 200)],
            "after {what}"
        );
    }
    let log = wait_for_log(
        &server,
        "peer closed the connection in the middle of a request",
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("record version 2, expected 1"), "{log}");
    assert!(
        log.contains("BEGIN_REQUEST for request 1 has a 9-byte body"),
        "{log}"
    );
    assert!(
        log.contains("peer closed the connection in the middle of a request"),
        "{log}"
    );
}

#[test]
fn slow_loris_gets_408_and_the_slot_back() {
    let (_dir, server, addr) = server();
    // Open max_connections (4) slow connections that never finish their request.
    let mut slow = Vec::new();
    for id in 1..=4u16 {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut b = Vec::new();
        begin(&mut b, id, record::ROLE_RESPONDER, 1);
        record::write_record(&mut b, record::PARAMS, id, &params_of("GET", "", None));
        s.write_all(&b).unwrap();
        slow.push((id, s));
    }
    // A fifth client waits in the backlog and is served once read_timeout frees a slot.
    let mut fifth = TcpStream::connect(addr).unwrap();
    let mut p = Vec::new();
    handshake(&mut p, 9, false);
    fifth.write_all(&p).unwrap();
    assert_eq!(read_all(&mut fifth), vec![Got::Resp(9, 200)]);
    for (id, mut s) in slow {
        assert_eq!(read_all(&mut s), vec![Got::Resp(id, 408)]);
    }
    assert!(server
        .log()
        .contains("request did not arrive within read_timeout_secs"));
}

#[test]
fn connections_beyond_the_cap_wait_and_none_is_dropped() {
    let (_dir, _server, addr) = server();
    // 4 idle keep-alive connections hold every slot...
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // ...a fifth connection's request waits (it is not refused)...
    let mut waiting = TcpStream::connect(addr).unwrap();
    let mut p = Vec::new();
    handshake(&mut p, 3, false);
    waiting.write_all(&p).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        waiting.read(&mut byte).is_err(),
        "answered while every slot was taken"
    );
    // ...and is answered as soon as one slot frees.
    drop(held);
    assert_eq!(read_all(&mut waiting), vec![Got::Resp(3, 200)]);
}

#[test]
fn a_peer_that_resets_while_we_write_harms_no_one() {
    let (_dir, server, addr) = server();
    for _ in 0..5 {
        let s = TcpStream::connect(addr).unwrap();
        let mut b = Vec::new();
        for id in 1..=200 {
            text_post(&mut b, id, true);
        }
        let mut s2 = s.try_clone().unwrap();
        s2.write_all(&b).unwrap();
        // SO_LINGER 0: close sends RST while the server is still writing answers.
        let sock = reset_on_close(s);
        drop(sock);
    }
    let mut fresh = TcpStream::connect(addr).unwrap();
    let mut p = Vec::new();
    handshake(&mut p, 1, false);
    fresh.write_all(&p).unwrap();
    assert_eq!(read_all(&mut fresh), vec![Got::Resp(1, 200)]);
    assert!(!server.log().contains("panicked"));
}

/// Set SO_LINGER {on, 0}, so that dropping the socket resets the connection (RST).
fn reset_on_close(s: TcpStream) -> TcpStream {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    s
}

#[test]
fn allowed_clients_refuses_other_addresses() {
    for (allowed, served) in [
        ("[\"127.0.0.1\"]", true),
        ("[\"10.9.8.7\", \"::1\"]", false),
    ] {
        let dir = TempDir::new("allowed");
        let config = write_config(&dir, &format!("[server]\nallowed_clients = {allowed}\n"));
        let (server, addr) = start_server(&dir, &config);
        let mut s = TcpStream::connect(addr).unwrap();
        let mut p = Vec::new();
        handshake(&mut p, 1, false);
        let _ = s.write_all(&p);
        let got = read_all(&mut s);
        if served {
            assert_eq!(got, vec![Got::Resp(1, 200)]);
        } else {
            assert_eq!(got, vec![], "{allowed}");
            let start = Instant::now();
            while !server.log().contains("not in allowed_clients") {
                assert!(start.elapsed() < Duration::from_secs(5), "{}", server.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
