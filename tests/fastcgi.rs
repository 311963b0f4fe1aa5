//! The FastCGI server through independent clients: the `fastcgi-client` crate and
//! libfcgi's `cgi-fcgi`, plus raw management records (GET_VALUES, unknown types, roles).

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use fastcgi_client::{Client, Params, Request};
use wechat_fcgi::fcgi::{params, record};

fn split_response(stdout: &[u8]) -> (String, String) {
    let at = stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    (
        String::from_utf8_lossy(&stdout[..at]).into_owned(),
        String::from_utf8_lossy(&stdout[at + 4..]).into_owned(),
    )
}

#[tokio::test]
async fn fastcgi_client_crate_keep_alive_requests() {
    let dir = TempDir::new("fcgi-client");
    let config = write_config(&dir, RULES);
    let (server, addr) = start_server(&dir, &config);
    let q = signed("777");
    let big = "长".repeat(40_000); // 120 KB of Content: STDIN split across records
    let rows: Vec<(&str, String, String, &str, &str)> = vec![
        (
            "GET",
            format!("{}&echostr=hello", signed("776")),
            String::new(),
            "Status: 200 OK",
            "hello",
        ),
        (
            "POST",
            q.clone(),
            wechat_fcgi::sample::text("gh", "oF", 1, "hi"),
            "Status: 200 OK",
            "Hello!",
        ),
        (
            "POST",
            signed("779"),
            wechat_fcgi::sample::text("gh", "oF", 1, &big),
            "Status: 200 OK",
            "Sorry, I did not understand.",
        ),
        (
            "POST",
            q.replace("777", "778"),
            wechat_fcgi::sample::text("gh", "oF", 1, "hi"),
            "Status: 403 Forbidden",
            "bad signature",
        ),
        (
            "DELETE",
            q.clone(),
            String::new(),
            "Status: 405",
            "method not allowed",
        ),
    ];
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut client = Client::new_keep_alive(stream);
    for (method, query, body, status, needle) in rows {
        let params = Params::default()
            .request_method(method)
            .query_string(query.as_str())
            .script_name("/wechat")
            .request_uri("/wechat")
            .content_type("text/xml")
            .content_length(body.len());
        let out = client
            .execute(Request::new(params, &mut body.as_bytes()))
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}\n{}", server.log()));
        let (head, text) = split_response(&out.stdout.unwrap());
        assert!(head.starts_with(status), "{method}: {head}");
        assert!(
            head.contains(&format!("Content-Length: {}", text.len())),
            "{head}"
        );
        assert!(text.contains(needle), "{method}: {text}");
        assert_eq!(out.stderr, None);
    }
}

/// Run libfcgi's cgi-fcgi under `env -i` with these CGI variables and body.
fn cgi_fcgi(connect: &str, vars: &[(&str, &str)], body: &[u8]) -> (String, String) {
    let mut cmd = Command::new("cgi-fcgi");
    cmd.env_clear().args(["-bind", "-connect", connect]);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cgi-fcgi not found: run scripts/test.sh, which installs libfcgi-bin");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cgi-fcgi failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    split_response(&out.stdout)
}

#[test]
fn cgi_fcgi_over_tcp_and_unix_with_params_split_across_records() {
    let dir = TempDir::new("cgi-fcgi");
    let config = write_config(&dir, RULES);
    let (_tcp_server, addr) = start_server(&dir, &config);
    // A second instance on a Unix socket, chosen by --listen.
    let sock = dir.path("w.sock");
    let unix_log = dir.path("unix.log");
    let mut unix_server = Proc {
        child: Command::new(BIN)
            .process_group(0)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&unix_log).unwrap())
            .spawn()
            .unwrap(),
        stderr: unix_log,
        is_nginx: false,
    };
    wait_for_log(&unix_server, "wechat-fcgi serving");
    let q = signed("99");
    let body = wechat_fcgi::sample::text("gh", "oF", 1, "你好");
    let len = body.len().to_string();
    // A 40 000-byte variable: libfcgi sends it across several PARAMS records, with the
    // 4-byte length form.
    let huge = "x".repeat(40_000);
    for connect in [addr.to_string(), sock.display().to_string()] {
        let (head, text) = cgi_fcgi(
            &connect,
            &[
                ("REQUEST_METHOD", "POST"),
                ("QUERY_STRING", &q),
                ("CONTENT_LENGTH", &len),
                ("HTTP_X_PADDING", &huge),
            ],
            body.as_bytes(),
        );
        assert!(head.starts_with("Status: 200 OK"), "{connect}: {head}");
        assert!(
            text.contains("<Content><![CDATA[Hello!]]></Content>"),
            "{connect}: {text}"
        );
        // A handshake is signed anew (its query is never accepted with a body).
        let (head, text) = cgi_fcgi(
            &connect,
            &[
                ("REQUEST_METHOD", "GET"),
                ("QUERY_STRING", &format!("{}&echostr=abc", signed("98"))),
            ],
            b"",
        );
        assert!(head.starts_with("Status: 200 OK"), "{head}");
        assert_eq!(text, "abc");
    }
    assert!(sock.exists());
    assert!(unix_server.signal_and_wait(15).success(), "SIGTERM exits 0");
    // Like `nginx -s stop`: the socket it created is gone, not left stale.
    assert!(!sock.exists(), "the server removes the socket it created");
}

#[test]
fn management_records_and_roles() {
    let dir = TempDir::new("mgmt");
    let config = write_config(&dir, "[server]\nmax_connections = 77\n");
    let (server, addr) = start_server(&dir, &config);
    let mut s = TcpStream::connect(addr).unwrap();

    // FCGI_GET_VALUES: answered with the configured limits and no multiplexing.
    let mut query = Vec::new();
    for name in [
        "FCGI_MAX_CONNS",
        "FCGI_MAX_REQS",
        "FCGI_MPXS_CONNS",
        "FCGI_UNKNOWN_VAR",
    ] {
        params::write_pair(&mut query, name.as_bytes(), b"");
    }
    let mut out = Vec::new();
    record::write_record(&mut out, record::GET_VALUES, 0, &query);
    s.write_all(&out).unwrap();
    let recs = read_records(&mut s, record::GET_VALUES_RESULT);
    let values: Vec<(String, String)> = params::pairs(&recs[0].2)
        .map(|p| p.unwrap())
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("FCGI_MAX_CONNS", "77"),
        ("FCGI_MAX_REQS", "77"),
        ("FCGI_MPXS_CONNS", "0"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(values, expected);

    // An unknown management type: UNKNOWN_TYPE naming it.
    out.clear();
    record::write_record(&mut out, 42, 0, b"");
    s.write_all(&out).unwrap();
    let recs = read_records(&mut s, record::UNKNOWN_TYPE);
    assert_eq!(
        recs[0],
        (record::UNKNOWN_TYPE, 0, vec![42, 0, 0, 0, 0, 0, 0, 0])
    );

    // Authorizer and Filter roles: END_REQUEST with UNKNOWN_ROLE; the connection lives on.
    for (id, role) in [
        (5u16, record::ROLE_AUTHORIZER),
        (6, record::ROLE_FILTER),
        (7, 99),
    ] {
        out.clear();
        begin(&mut out, id, role, record::FLAG_KEEP_CONN);
        s.write_all(&out).unwrap();
        let recs = read_records(&mut s, record::END_REQUEST);
        assert_eq!(
            recs.last().unwrap(),
            &(
                record::END_REQUEST,
                id,
                vec![0, 0, 0, 0, record::UNKNOWN_ROLE, 0, 0, 0]
            )
        );
    }

    // A Responder request without KEEP_CONN: answered, then the server closes.
    out.clear();
    begin(&mut out, 9, record::ROLE_RESPONDER, 0);
    let mut p = Vec::new();
    params::write_pair(&mut p, b"REQUEST_METHOD", b"GET");
    params::write_pair(
        &mut p,
        b"QUERY_STRING",
        format!("{}&echostr=zz", signed("2")).as_bytes(),
    );
    record::write_stream(&mut out, record::PARAMS, 9, &p);
    record::write_stream(&mut out, record::STDIN, 9, b"");
    s.write_all(&out).unwrap();
    let recs = read_records(&mut s, record::END_REQUEST);
    let stdout: Vec<u8> = recs
        .iter()
        .filter(|r| r.0 == record::STDOUT)
        .flat_map(|r| r.2.clone())
        .collect();
    assert!(
        stdout.ends_with(b"\r\n\r\nzz"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
    assert_eq!(recs.last().unwrap(), &(record::END_REQUEST, 9, vec![0; 8]));
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "closed after a request without KEEP_CONN"
    );
    drop(server);
}
