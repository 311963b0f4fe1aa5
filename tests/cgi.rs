//! CGI mode: the binary run as a web server runs a CGI program (environment + stdin).

mod common;
use common::*;

use std::io::Write;
use std::process::{Command, Stdio};

/// Run the binary as a CGI program; returns (exit ok, stdout, stderr).
fn run_cgi(args: &[&str], vars: &[(&str, &str)], body: &[u8]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .args(args)
        .env("GATEWAY_INTERFACE", "CGI/1.1");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(body); // the program may refuse before reading it all
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cgi_requests() {
    let dir = TempDir::new("cgi");
    let config = write_config(&dir, &format!("[server]\nmax_body_bytes = 2000\n{RULES}"));
    let config = config.to_str().unwrap();
    let q = signed(1_700_000_000, "5");
    let hi = wechat_fcgi::cli::sample_text("gh", "oF", 1, "hi");
    let hi_len = hi.len().to_string();
    let big = vec![b'x'; 5000];
    let env_cfg = ("WECHAT_FCGI_CONFIG", config);
    let handshake_q = format!("{q}&echostr=cgi-echo");
    let bad_q = q.replace("nonce=5", "nonce=6");
    // (what, argv, vars, body, status line, body text)
    type Row<'a> = (
        &'a str,
        Vec<&'a str>,
        Vec<(&'a str, &'a str)>,
        &'a [u8],
        &'a str,
        &'a str,
    );
    let rows: Vec<Row> = vec![
        (
            "handshake, config from env",
            vec![],
            vec![
                env_cfg,
                ("REQUEST_METHOD", "GET"),
                ("QUERY_STRING", &handshake_q),
            ],
            b"",
            "Status: 200 OK",
            "cgi-echo",
        ),
        (
            "text rule, config from --config",
            vec!["--config", config],
            vec![
                ("REQUEST_METHOD", "POST"),
                ("QUERY_STRING", &q),
                ("CONTENT_LENGTH", &hi_len),
            ],
            hi.as_bytes(),
            "Status: 200 OK",
            "<Content><![CDATA[Hello!]]></Content>",
        ),
        (
            "argv words from a query without '=' are ignored",
            vec!["some", "words"],
            vec![
                env_cfg,
                ("REQUEST_METHOD", "POST"),
                ("QUERY_STRING", &q),
                ("CONTENT_LENGTH", &hi_len),
            ],
            hi.as_bytes(),
            "Status: 200 OK",
            "Hello!",
        ),
        (
            "bad signature",
            vec![],
            vec![
                env_cfg,
                ("REQUEST_METHOD", "POST"),
                ("QUERY_STRING", &bad_q),
                ("CONTENT_LENGTH", &hi_len),
            ],
            hi.as_bytes(),
            "Status: 403 Forbidden",
            "bad signature",
        ),
        (
            "body over max_body_bytes",
            vec![],
            vec![
                env_cfg,
                ("REQUEST_METHOD", "POST"),
                ("QUERY_STRING", &q),
                ("CONTENT_LENGTH", "5000"),
            ],
            &big,
            "Status: 413",
            "body too large",
        ),
        (
            "body shorter than CONTENT_LENGTH",
            vec![],
            vec![
                env_cfg,
                ("REQUEST_METHOD", "POST"),
                ("QUERY_STRING", &q),
                ("CONTENT_LENGTH", "900"),
            ],
            hi.as_bytes(),
            "Status: 400",
            "Content-Length",
        ),
    ];
    for (what, args, vars, body, status, text) in rows {
        let (_, stdout, stderr) = run_cgi(&args, &vars, body);
        let (head, got) = stdout
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{what}: {stdout:?} {stderr}"));
        assert!(head.starts_with(status), "{what}: {head}\n{stderr}");
        assert!(head.contains("\r\nContent-Type: "), "{what}: {head}");
        assert!(got.contains(text), "{what}: {got}");
        assert!(
            stderr.contains("method=") || stderr.contains("request"),
            "{what}: logged: {stderr}"
        );
    }
}

#[test]
fn cgi_with_a_broken_config_answers_503_and_names_the_key() {
    let dir = TempDir::new("cgi-bad");
    let path = dir.path("bad.toml");
    std::fs::write(&path, "[account]\ntoken = \"x\"\n").unwrap();
    let (ok, stdout, stderr) = run_cgi(
        &[],
        &[
            ("WECHAT_FCGI_CONFIG", path.to_str().unwrap()),
            ("REQUEST_METHOD", "GET"),
        ],
        b"",
    );
    assert!(!ok);
    assert!(stdout.starts_with("Status: 503"), "{stdout}");
    assert!(stderr.contains("account.token"), "{stderr}");
}
