//! CGI mode: the binary run as a web server runs a CGI program (environment + stdin).

mod common;
use common::*;

#[test]
fn cgi_requests() {
    let dir = TempDir::new("cgi");
    let config = write_config(&dir, &format!("[server]\nmax_body_bytes = 2000\n{RULES}"));
    let config = config.to_str().unwrap();
    let q = signed("5");
    let hi = wechat_fcgi::sample::text("gh", "oF", 1, "hi");
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
            "text rule",
            vec![],
            vec![
                env_cfg,
                ("REQUEST_METHOD", "POST"),
                ("QUERY_STRING", &q),
                ("CONTENT_LENGTH", &hi_len),
            ],
            hi.as_bytes(),
            "Status: 200 OK",
            "<Content><![CDATA[Hello!]]></Content>",
        ),
        // Regression: Apache passes `?--config+FILE` as argv; argv chose the config.
        (
            "--config in argv is never read in CGI mode",
            vec!["--config", config],
            vec![
                ("REQUEST_METHOD", "POST"),
                ("QUERY_STRING", &q),
                ("CONTENT_LENGTH", &hi_len),
            ],
            hi.as_bytes(),
            "Status: 503 Service Unavailable",
            "server misconfigured",
        ),
        (
            "--config=/dev/zero in argv cannot replace the configured file",
            vec!["--config=/dev/zero", "--config", "/dev/stdin"],
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
            "CONTENT_LENGTH that is not a number",
            vec![],
            vec![
                env_cfg,
                ("REQUEST_METHOD", "POST"),
                ("QUERY_STRING", &q),
                ("CONTENT_LENGTH", "12abc"),
            ],
            hi.as_bytes(),
            "Status: 400 Bad Request",
            "malformed Content-Length",
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

#[test]
fn cgi_runs_reply_programs_and_safe_mode() {
    let dir = TempDir::new("cgi-program");
    let fortune = format!("{}/scripts/examples/fortune.sh", env!("CARGO_MANIFEST_DIR"));
    let key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    let config = write_config(
        &dir,
        &format!(
            "appid = \"wx0123456789abcdef\"\nmode = \"compat\"\nencoding_aes_key = \"{key}\"\n\
             [[rule]]\ntext = \"fortune\"\nrun = {{ command = [\"{fortune}\"] }}\n"
        ),
    );
    let config = config.to_str().unwrap();
    // A program rule, plaintext.
    let body = wechat_fcgi::sample::text("gh", "oF", unix_now(), "fortune");
    let len = body.len().to_string();
    let q = signed("1");
    let (_, stdout, stderr) = run_cgi(
        &[],
        &[
            ("WECHAT_FCGI_CONFIG", config),
            ("REQUEST_METHOD", "POST"),
            ("QUERY_STRING", &q),
            ("CONTENT_LENGTH", &len),
        ],
        body.as_bytes(),
    );
    let fortunes = std::fs::read_to_string(format!(
        "{}/scripts/examples/fortunes.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert!(stdout.starts_with("Status: 200"), "{stdout}\n{stderr}");
    assert!(
        fortunes
            .lines()
            .any(|l| stdout.contains(&format!("<Content><![CDATA[{l}]]></Content>"))),
        "{stdout}"
    );
    assert!(stderr.contains("via=program"), "{stderr}");
    // The same program answering an encrypted message: the reply is sealed.
    let crypto = wechat_fcgi::core::Crypto {
        key: wechat_fcgi::core::crypto::AesKey::parse(key).unwrap(),
        previous_key: None,
        appid: "wx0123456789abcdef".to_owned(),
    };
    let sealed = wechat_fcgi::sample::encrypted_request(
        TOKEN,
        &crypto,
        "gh",
        &body,
        unix_now(),
        "n",
        &[1; 16],
    );
    let (q, envelope) = (sealed.query, sealed.body);
    let len = envelope.len().to_string();
    let (_, stdout, stderr) = run_cgi(
        &[],
        &[
            ("WECHAT_FCGI_CONFIG", config),
            ("REQUEST_METHOD", "POST"),
            ("QUERY_STRING", &q),
            ("CONTENT_LENGTH", &len),
        ],
        envelope.as_bytes(),
    );
    assert!(stdout.starts_with("Status: 200"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("<Encrypt><![CDATA[") && stdout.contains("<MsgSignature>"),
        "{stdout}"
    );
}

/// In CGI mode every line lands in the web server's error log (Apache marks each one
/// `[cgi:error]`): by default only warnings and errors are written. With the memory
/// store, each request says that retries and replays are not recognised.
#[test]
fn cgi_mode_logs_warnings_only_by_default() {
    let dir = TempDir::new("cgi-quiet");
    let config = write_config(
        &dir,
        &format!("[state]\nstore = \"sqlite:state.db\"\n{RULES}"),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let query = signed("1");
    let hi = wechat_fcgi::sample::text_with_id("gh", "oF", unix_now(), "hi", 1);
    let run = |extra: &[(&str, &str)]| {
        let child = spawn_cgi(&config, &query, hi.as_bytes(), extra);
        let out = child.wait_with_output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("Hello!"));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert_eq!(run(&[]), "", "nothing logged for an answered request");
    assert!(run(&[("WECHAT_FCGI_LOG", "info")]).contains("outcome=reply"));
    // The memory store: said on each request (each is the first its process sees).
    let memory = write_config(&dir, RULES);
    std::fs::set_permissions(&memory, std::fs::Permissions::from_mode(0o600)).unwrap();
    let child = spawn_cgi(&memory, &signed("2"), hi.as_bytes(), &[]);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("retries are not recognised"), "{stderr}");
    assert!(
        stderr.contains("replayed signed query is not refused"),
        "{stderr}"
    );
}
