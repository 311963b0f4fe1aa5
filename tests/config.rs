//! Config loading: every problem is reported with the key it is about; the CLI's
//! `check-config` and `sign` behave as documented.

mod common;
use common::*;

use std::process::Command;
use wechat_fcgi::config::Config;

const OK_ACCOUNT: &str = "[account]\ntoken = \"abc123\"\n";

#[test]
fn bad_configs_name_the_key() {
    let rows: Vec<(String, &str)> = vec![
        ("".into(), "missing field `account`"),
        ("[account]\n".into(), "missing field `token`"),
        ("[account]\ntoken = \"ab\"\n".into(), "account.token: must be 3 to 32"),
        ("[account]\ntoken = \"has space\"\n".into(), "account.token: must contain only"),
        (format!("{OK_ACCOUNT}mode = \"secure\"\n"), "account.mode: \"secure\" is not one of"),
        (format!("{OK_ACCOUNT}appid = \"wx-1\"\n"), "account.appid"),
        (format!("{OK_ACCOUNT}tokn = \"x\"\n"), "unknown field `tokn`"),
        (format!("[server]\nlisten = \"9000\"\n{OK_ACCOUNT}"), "server.listen: \"9000\": expected unix:PATH or tcp:HOST:PORT"),
        (format!("[server]\nsocket_mode = \"rw\"\n{OK_ACCOUNT}"), "server.socket_mode"),
        (format!("[server]\nmax_body_bytes = 0\n{OK_ACCOUNT}"), "server.max_body_bytes: 0 is out of range: must be 1 to 67108864"),
        // Regression: values check-config accepted made `serve` panic.
        (format!("[server]\nidle_timeout_secs = 9223372036854775807\n{OK_ACCOUNT}"), "server.idle_timeout_secs: 9223372036854775807 is out of range"),
        (format!("[server]\nmax_connections = 9223372036854775807\n{OK_ACCOUNT}"), "server.max_connections: 9223372036854775807 is out of range"),
        (format!("[server]\nmax_programs = 100000000\n{OK_ACCOUNT}"), "server.max_programs: 100000000 is out of range: must be 1 to 1024"),
        (format!("[server]\nretry_cache_entries = 9223372036854775807\n{OK_ACCOUNT}"), "server.retry_cache_entries: 9223372036854775807 is out of range"),
        (format!("[server]\nlisten_backlog = 0\n{OK_ACCOUNT}"), "server.listen_backlog: 0 is out of range"),
        (format!("[state]\nstore = \"postgres://x\"\n{OK_ACCOUNT}"), "state.store: \"postgres://x\" is not \"memory\", \"sqlite:PATH\" or \"redis://HOST:PORT/DB\""),
        (format!("[state]\nstore = \"sqlite:\"\n{OK_ACCOUNT}"), "state.store: sqlite: needs a file path"),
        (format!("[state]\nkey_prefix = \"x:\"\n{OK_ACCOUNT}"), "state.key_prefix: only goes with a redis:// store"),
        (format!("[archive]\nto = \"redis\"\n{OK_ACCOUNT}"), "archive.to: \"redis\" archives to the [state] Redis"),
        (format!("[archive]\nto = \"syslog\"\n{OK_ACCOUNT}"), "archive.to: \"syslog\" is not \"jsonl:PATH\", \"sqlite:PATH\" or \"redis\""),
        (format!("[server]\ntimestamp_window_secs = 999999\n{OK_ACCOUNT}"), "server.timestamp_window_secs: 999999 is out of range"),
        (format!("[server]\nmax_body_bytes = -1\n{OK_ACCOUNT}"), "max_body_bytes"),
        (format!("[server]\nread_timeout_secs = 0\n{OK_ACCOUNT}"), "server.read_timeout_secs"),
        (format!("{OK_ACCOUNT}[[rule]]\nreply = {{ text = \"x\" }}\n"), "rule[0]: matches nothing"),
        (format!("{OK_ACCOUNT}[[rule]]\nname = \"both\"\ntext = \"a\"\nevent = \"CLICK\"\nreply = {{ text = \"x\" }}\n"), "rule[0] (both): has text and event; a rule matches one thing"),
        (format!("{OK_ACCOUNT}[[rule]]\ntext = []\nreply = {{ text = \"x\" }}\n"), "rule[0].text: needs at least one"),
        (format!("{OK_ACCOUNT}[[rule]]\ntext = \"a\"\nkey = \"k\"\nreply = {{ text = \"x\" }}\n"), "rule[0].key: only goes with `event`"),
        (format!("{OK_ACCOUNT}[[rule]]\ntext = \"a\"\nreply = {{ txt = \"x\" }}\n"), "unknown variant `txt`"),
        (format!("{OK_ACCOUNT}[[rule]]\ntext = \"a\"\nreply = {{ news = [] }}\n"), "rule[0].reply: news reply has no articles"),
        (format!("{OK_ACCOUNT}[[rule]]\ntext = \"a\"\nreply = {{ image = {{ media_id = \"\" }} }}\n"), "rule[0].reply: media_id is empty"),
        (format!("{OK_ACCOUNT}[default]\nreply = {{ voice = {{ mediaid = \"x\" }} }}\n"), "unexpected keys in table: mediaid"),
    ];
    let dir = TempDir::new("bad-configs");
    let not_executable = dir.path("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    let not_exec_row = rule_text_run(&not_executable);
    let rule = |body: &str| format!("{OK_ACCOUNT}[[rule]]\nname = \"r\"\n{body}\n");
    let more: Vec<(String, &str)> = vec![
        (
            rule("regex = '(unclosed'\nreply = { text = \"x\" }"),
            "rule[0] (r).regex: \"(unclosed\" does not compile",
        ),
        (
            rule("event = \" \"\nreply = { text = \"x\" }"),
            "rule[0] (r).event: needs an event name",
        ),
        (
            rule("text = \"a\"\nrun = { command = [\"/nonexistent/bot\"] }"),
            "rule[0] (r).run.command: \"/nonexistent/bot\" cannot be read",
        ),
        (not_exec_row, "is not an executable file"),
        (
            rule("text = \"a\"\nrun = { command = [\"no-such-program-xyz\"] }"),
            "is not found in PATH",
        ),
        (
            rule("text = \"a\"\nrun = { command = [] }"),
            "rule[0] (r).run.command: is empty",
        ),
        (
            rule("text = \"a\"\nrun = { command = [\"/bin/cat\"], timeout_ms = 0 }"),
            "rule[0] (r).run.timeout_ms: must be 1 to 600000",
        ),
        (
            rule("text = \"a\"\nreply = { text = \"x\" }\nreplies = [ { text = \"y\" } ]"),
            "rule[0] (r): needs exactly one of `reply`, `replies` or `run`",
        ),
        (
            rule("text = \"a\"\nreplies = []"),
            "rule[0] (r).replies: needs at least one reply",
        ),
        (
            rule("text = \"a\"\nreply = { text = \"x\" }\nfallback = { text = \"y\" }"),
            "rule[0] (r).fallback: only goes with `run`",
        ),
        (
            rule("text = \"a\"\nreply = { text = \"{1}\" }"),
            "rule[0] (r).reply: `{1}`: the regex has only 0 capture groups",
        ),
        (
            rule("regex = 'a(b)'\nreply = { text = \"{name}\" }"),
            "rule[0] (r).reply: unknown placeholder `{name}`",
        ),
        (
            rule("event = \"CLICK\"\nignore_case = true\nreply = { text = \"x\" }"),
            "rule[0] (r).ignore_case: only goes with",
        ),
        (
            rule("contains = \"a\"\nprefix = \"b\"\nreply = { text = \"x\" }"),
            "rule[0] (r): has contains and prefix",
        ),
        (
            format!("[server]\nreply_budget_ms = 6000\n{OK_ACCOUNT}"),
            "server.reply_budget_ms: 6000 is out of range: must be 100 to 4900",
        ),
        (
            format!("[server]\nmax_programs = 0\n{OK_ACCOUNT}"),
            "server.max_programs: 0 is out of range: must be 1 to 1024",
        ),
        (
            format!("{OK_ACCOUNT}[late]\nmode = \"later\"\n"),
            "late.mode: \"later\" is not one of \"hold\", \"customer_service\", \"off\"",
        ),
        (
            format!("{OK_ACCOUNT}[late]\nmode = \"customer_service\"\n"),
            "late.mode: customer_service needs account.appid and account.appsecret",
        ),
        (
            format!("{OK_ACCOUNT}[late]\npickup_ttl_secs = 0\n"),
            "late.pickup_ttl_secs: 0 is out of range: must be 1 to 604800",
        ),
        (
            format!("{OK_ACCOUNT}[late]\npickup = [\" \"]\n"),
            "late.pickup: a pick-up word is empty",
        ),
        (
            format!("{OK_ACCOUNT}[late]\npending = {{ image = {{}} }}\n"),
            "missing field `media_id`",
        ),
        (
            format!("{OK_ACCOUNT}appsecret = \"abc\"\n"),
            "account.appid: required with appsecret",
        ),
        (
            format!("{OK_ACCOUNT}appid = \"wx1\"\nappsecret = \"a b\"\n"),
            "account.appsecret: is not an AppSecret",
        ),
        (
            format!("{OK_ACCOUNT}api_base = \"ftp://x\"\n"),
            "account.api_base: \"ftp://x\" does not start with http:// or https://",
        ),
        (
            rule("text = \"a\"\nrun = { url = \"localhost:5000\" }"),
            "rule[0] (r).run.url: \"localhost:5000\" does not start with http:// or https://",
        ),
        (
            rule("text = \"a\"\nrun = { url = \"http://u:p@h/\" }"),
            "rule[0] (r).run.url: has a user or password in it",
        ),
        (
            rule("text = \"a\"\nrun = { url = \"http://h/\", command = [\"/bin/cat\"] }"),
            "rule[0] (r).run: give `command` (a program) or `url` (an HTTP hook), not both",
        ),
        (
            rule("text = \"a\"\nrun = { url = \"http://h/\", env = { A = \"1\" } }"),
            "rule[0] (r).run.env: only goes with `command`",
        ),
    ];
    let path = dir.path("c.toml");
    for (text, needle) in rows.into_iter().chain(more) {
        std::fs::write(&path, &text).unwrap();
        let err = format!("{:#}", Config::load(&path).expect_err(&text));
        assert!(
            err.contains(needle),
            "config:\n{text}\nerror: {err}\nexpected: {needle}"
        );
    }
}

fn rule_text_run(program: &std::path::Path) -> String {
    format!(
        "{OK_ACCOUNT}[[rule]]\nname = \"r\"\ntext = \"a\"\nrun = {{ command = [\"{}\"] }}\n",
        program.display()
    )
}

#[test]
fn program_paths_with_a_slash_are_relative_to_the_config_folder_bare_names_use_path() {
    let dir = TempDir::new("program-paths");
    std::fs::create_dir_all(dir.path("bin")).unwrap();
    let script = dir.path("bin/answer.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path("c.toml");
    std::fs::write(
        &path,
        format!("{OK_ACCOUNT}[[rule]]\ntext = \"a\"\nrun = {{ command = [\"bin/answer.sh\"] }}\n[default]\nrun = {{ command = [\"sh\", \"-c\", \"echo x\"] }}\n"),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let command = |action: &wechat_fcgi::core::rules::Action| match action {
        wechat_fcgi::core::rules::Action::Run { program, .. } => program.command.clone(),
        _ => panic!("a program rule"),
    };
    let folder = dir.0.canonicalize().unwrap();
    assert_eq!(
        command(&config.accounts[0].responder.rules.rules[0].action)[0],
        folder.join("bin/answer.sh").to_string_lossy()
    );
    let sh = &command(config.accounts[0].responder.rules.default.as_ref().unwrap())[0];
    assert!(
        sh.ends_with("/sh") && sh.starts_with('/'),
        "found in PATH: {sh}"
    );
    // Parsing alone touches no file: a missing program is only found by `load`.
    let missing =
        format!("{OK_ACCOUNT}[[rule]]\ntext = \"a\"\nrun = {{ command = [\"./nope.sh\"] }}\n");
    assert!(Config::parse(&missing).is_ok());
    std::fs::write(&path, &missing).unwrap();
    assert!(format!("{:#}", Config::load(&path).unwrap_err()).contains("./nope.sh"));
}

#[test]
fn the_file_itself_is_checked_before_it_is_parsed() {
    let dir = TempDir::new("config-file");
    use std::os::unix::fs::PermissionsExt;
    // Not a regular file, or too large: never read whole (`/dev/zero` would never end).
    for special in ["/dev/zero", "/dev/null"] {
        let err = format!(
            "{:#}",
            Config::load(std::path::Path::new(special)).unwrap_err()
        );
        assert!(err.contains("not a regular file"), "{special}: {err}");
    }
    let big = dir.path("big.toml");
    std::fs::write(&big, format!("{OK_ACCOUNT}# {}\n", "x".repeat(2 << 20))).unwrap();
    let err = format!("{:#}", Config::load(&big).unwrap_err());
    assert!(err.contains("larger than 1048576 bytes"), "{err}");
    // Writable by everyone: anyone could add a rule that runs a program.
    let path = dir.path("c.toml");
    std::fs::write(&path, OK_ACCOUNT).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = format!("{:#}", Config::load(&path).unwrap_err());
    assert!(err.contains("writable by every user"), "{err}");
    // Readable by everyone: works, with a warning.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = Config::load(&path).unwrap();
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("readable by every user")),
        "{:?}",
        config.warnings
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(Config::load(&path).unwrap().warnings.is_empty());
}

// Regression: a TOML syntax error quoted the offending line, token or AES key included.
#[test]
fn syntax_errors_never_quote_the_file() {
    let secret = "s3cretTok3nValue";
    let key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    let rows = [
        format!("[account]\ntoken = \"{secret}\" junk\n"),
        format!("[account]\ntoken = \"{secret}\"\nencoding_aes_key = {key}\n"),
        format!("[account]\ntoken = {secret}\n"),
        format!("[account]\ntoken = \"{secret}\"\n[account]\nencoding_aes_key = \"{key}\"\n"),
    ];
    for text in rows {
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(!err.contains(secret) && !err.contains(key), "{err}");
        assert!(err.starts_with("line "), "says where: {err}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "[server]\nmax_connections = 0\n[account]\ntoken = \"x\"\n[[rule]]\nregex = \"(\"\nreply = { text = \"a\" }\n[[rule]]\nreply = { text = \"b\" }\n";
    let err = Config::parse(text).unwrap_err();
    assert_eq!(err.problems.len(), 4, "{err}");
}

/// The shipped example is refused until its token is set; with one, it is valid.
#[test]
fn the_shipped_example_config_needs_a_token_then_is_valid() {
    let path = format!("{}/conf/wechat-fcgi.toml", env!("CARGO_MANIFEST_DIR"));
    let err = format!(
        "{:#}",
        Config::load(std::path::Path::new(&path)).unwrap_err()
    );
    assert!(
        err.contains("account.token: set it to the Token from the admin panel"),
        "{err}"
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("token = \"<your token>\"", "token = \"myRealToken42\"");
    let dir = std::path::Path::new(&path).parent().unwrap();
    let config = Config::parse_in(&text, dir).unwrap();
    assert!(config.accounts[0].responder.rules.rules.len() >= 2);
    assert!(config.accounts[0].responder.rules.default.is_some());
}

#[test]
fn check_config_exit_codes() {
    let dir = TempDir::new("check");
    let good = write_config(&dir, RULES);
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 rules, default reply: yes)"));
    let bad = dir.path("bad.toml");
    std::fs::write(&bad, "[account]\ntoken = \"secret-token-value!\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("account.token"), "{err}");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a bad config stops start-up");
    assert!(String::from_utf8_lossy(&out.stderr).contains("account.token"));
}

/// `check-config` says what happens to slow answers, and checks the API's CA file.
#[test]
fn check_config_reports_late_answers_and_reads_the_api_ca_file() {
    let dir = TempDir::new("check-late");
    let good = write_config(&dir, "[late]\npickup = [\"1\", \"more\"]\n");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("late answers: hold (pick-up words: [\"1\", \"more\"], kept 86400 s)"),
        "{stdout}"
    );
    let off = write_config(&dir, "[late]\nmode = \"off\"\n");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&off)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("late answers: off (a program slower"));
    std::fs::write(dir.path("ca.pem"), "not a certificate").unwrap();
    let bad_ca = write_config(
        &dir,
        "appid = \"wx1234567890abcdef\"\nappsecret = \"s3cret\"\napi_ca_file = \"ca.pem\"\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad_ca)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("account.api_ca_file"), "{err}");
    assert!(
        !err.contains("s3cret"),
        "the AppSecret is not echoed: {err}"
    );
}

#[test]
fn sign_prints_a_query_the_server_accepts() {
    let out = Command::new(BIN)
        .args([
            "sign",
            "--token",
            TOKEN,
            "--timestamp",
            "1409659813",
            "--nonce",
            "1372623149",
            "--text",
            "hi",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let query = lines.next().unwrap();
    let body = lines.next().unwrap();
    // Independent value, from Python's hashlib:
    // sha1("".join(sorted(["testtoken123", "1409659813", "1372623149"])).encode())
    assert_eq!(
        query,
        "signature=fe23aa77749afb286659de90bed7a1103be81bcb&timestamp=1409659813&nonce=1372623149&openid=oFollower0000000000000000001"
    );
    let r = Config::parse(&format!("[account]\ntoken = \"{TOKEN}\"\n{RULES}"))
        .unwrap()
        .into_responder();
    let resp = r.handle(
        &wechat_fcgi::core::Request {
            method: "POST",
            query,
            body: body.as_bytes(),
        },
        1409659813,
        &mut rand_core::OsRng,
    );
    assert_eq!(resp.status, 200);
    assert!(String::from_utf8_lossy(&resp.body).contains("Hello!"));
}

/// The README's config table is the user's reference: every numeric `[server]` key has
/// its row, with the default and the range the code enforces.
#[test]
fn the_readme_config_table_matches_the_code() {
    let readme =
        std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let rows: Vec<Vec<&str>> = readme
        .lines()
        .filter(|l| l.starts_with("| `server."))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    for bound in wechat_fcgi::config::defaults::SERVER_NUMBERS {
        let key = format!("`server.{}`", bound.key);
        let row = rows
            .iter()
            .find(|r| r[1] == key)
            .unwrap_or_else(|| panic!("README has no row for {key}"));
        assert_eq!(row[2], bound.default.to_string(), "{key}: default");
        assert_eq!(
            row[3],
            format!("{}-{}", bound.min, bound.max),
            "{key}: range"
        );
    }
    // And no numeric row the code does not know.
    for row in &rows {
        if !row[3].is_empty() {
            let key = row[1].trim_matches('`').trim_start_matches("server.");
            assert!(
                wechat_fcgi::config::defaults::SERVER_NUMBERS
                    .iter()
                    .any(|b| b.key == key),
                "README row {key} has a range the code does not define"
            );
        }
    }
}

/// The binary itself, as an operator runs it: a config with a syntax error never shows
/// its secrets; values that used to make `serve` panic, and a config anyone may edit,
/// stop it with a message instead.
#[test]
fn serve_and_check_config_refuse_dangerous_configs_without_leaking_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("config-binary");
    let run = |args: &[&str], path: &std::path::Path| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(path)
            .env_remove("WECHAT_FCGI_CONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let secret = "Sup3rS3cretT0ken";
    let rows = [
        (
            format!("[account]\ntoken = \"{secret}\" oops\n"),
            0o600,
            "line 2",
        ),
        (
            format!("[server]\nidle_timeout_secs = 9223372036854775807\n[account]\ntoken = \"{secret}\"\n"),
            0o600,
            "server.idle_timeout_secs",
        ),
        (
            format!("[account]\ntoken = \"{secret}\"\n"),
            0o666,
            "writable by every user",
        ),
    ];
    let path = dir.path("c.toml");
    for (text, mode, needle) in rows {
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        for command in [
            &["check-config"][..],
            &["serve", "--listen", "tcp:127.0.0.1:1"][..],
        ] {
            let (code, output) = run(command, &path);
            assert_eq!(code, Some(1), "{command:?} {text}: {output}");
            assert!(output.contains(needle), "{command:?}: {output}");
            assert!(
                !output.contains(secret),
                "{command:?} leaked the token: {output}"
            );
            assert!(!output.contains("panicked"), "{output}");
        }
    }
}

/// Any event name and any MsgType may be matched (WeChat adds new ones); one WeChat
/// does not document gets a warning, with a suggestion when it looks like a typo.
#[test]
fn unknown_event_and_type_names_are_warnings_with_a_suggestion() {
    let rows = [
        ("event = \"clik\"", Some("did you mean \"CLICK\"")),
        (
            "event = \"kf_create_sesion\"",
            Some("did you mean \"kf_create_session\""),
        ),
        (
            "event = \"my_future_event\"",
            Some("is not one WeChat documents (the rule"),
        ),
        ("msg_type = \"photo\"", Some("is not one WeChat documents")),
        ("msg_type = \"imgae\"", Some("did you mean \"image\"")),
        ("event = \"user_get_card\"", None),
        ("event = \"WifiConnected\"", None),
        ("event = \"wificonnected\"", None),
        ("msg_type = \"file\"", None),
        ("msg_type = \"device_event\"", None),
    ];
    for (matcher, warning) in rows {
        let text = format!("{OK_ACCOUNT}[[rule]]\n{matcher}\nreply = {{ text = \"x\" }}\n");
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("{matcher}: {e}"));
        match warning {
            Some(w) => assert!(
                config.warnings.iter().any(|x| x.contains(w)),
                "{matcher}: {:?}",
                config.warnings
            ),
            None => assert!(
                config.warnings.is_empty(),
                "{matcher}: {:?}",
                config.warnings
            ),
        }
    }
}

/// `check-config` accepts every MsgType and event name WeChat documents, silently.
#[test]
fn every_documented_type_and_event_is_accepted_without_a_warning() {
    use wechat_fcgi::core::rules::{DOCUMENTED_MSG_TYPES, KNOWN_EVENTS};
    let mut text = OK_ACCOUNT.to_owned();
    for t in DOCUMENTED_MSG_TYPES {
        text.push_str(&format!(
            "[[rule]]\nmsg_type = \"{t}\"\nreply = {{ text = \"x\" }}\n"
        ));
    }
    for e in KNOWN_EVENTS {
        text.push_str(&format!(
            "[[rule]]\nevent = \"{e}\"\nkey = \"k\"\nreply = {{ text = \"x\" }}\n"
        ));
    }
    let config = Config::parse(&text).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert!(
        KNOWN_EVENTS.len() >= 62,
        "{} event names",
        KNOWN_EVENTS.len()
    );
}

/// `sign --config` signs with the config's token and, in safe mode, encrypts the
/// message as WeChat does; `sign --decrypt` reads the encrypted reply back.
#[test]
fn sign_with_a_config_encrypts_and_decrypts_in_safe_mode() {
    let dir = TempDir::new("sign-safe");
    let config = write_config(
        &dir,
        &format!(
            "appid = \"wx0123456789abcdef\"\nmode = \"safe\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n{RULES}"
        ),
    );
    let out = Command::new(BIN)
        .args(["sign", "--config"])
        .arg(&config)
        .args(["--text", "hi"])
        .env_remove("WECHAT_FCGI_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let (query, body) = (lines.next().unwrap(), lines.next().unwrap());
    assert!(query.contains("encrypt_type=aes&msg_signature="), "{query}");
    assert!(
        body.contains("<Encrypt>") && !body.contains("<Content>"),
        "{body}"
    );
    let responder = Config::load(&config).unwrap().into_responder();
    let reply = responder.handle(
        &wechat_fcgi::core::Request {
            method: "POST",
            query,
            body: body.as_bytes(),
        },
        unix_now(),
        &mut rand_core::OsRng,
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // The reply is sealed; --decrypt opens it.
    let mut child = Command::new(BIN)
        .args(["sign", "--config"])
        .arg(&config)
        .arg("--decrypt")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&reply.body).unwrap();
    let out = child.wait_with_output().unwrap();
    let inner = String::from_utf8_lossy(&out.stdout);
    assert!(
        inner.contains("<Content><![CDATA[Hello!]]></Content>"),
        "{inner}"
    );
    // A URL that already has a query gets the signature appended with `&`.
    let out = Command::new(BIN)
        .args([
            "sign",
            "--token",
            TOKEN,
            "--url",
            "http://127.0.0.1:8080/wechat?site=1",
        ])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("/wechat?site=1&signature="), "{line}");
    // --version works.
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("wechat-fcgi "));
}

#[test]
fn status_keys_are_checked() {
    let rows = [
        (
            "[server]\nstatus_path = \"wechat-status\"\n",
            "server.status_path: \"wechat-status\" is not a path",
        ),
        (
            "[server]\nstatus_path = \"/s\"\nping_path = \"/s\"\n",
            "server.ping_path: the same as status_path",
        ),
        (
            "[server]\nstatus_allowed = [\"127.0.0.1\"]\n",
            "server.status_allowed: only goes with status_path or ping_path",
        ),
        (
            "[server]\nping_path = \"/p\"\nstatus_allowed = [\"localhost\"]\n",
            "server.status_allowed: \"localhost\" is not an IPv4 or IPv6 address",
        ),
        (
            "[log]\nformat = \"xml\"\n",
            "log.format: \"xml\" is not one of \"text\", \"json\"",
        ),
    ];
    for (text, needle) in rows {
        let text = format!("{text}{OK_ACCOUNT}");
        let err = Config::parse(&text).expect_err(&text).to_string();
        assert!(err.contains(needle), "{text}\n{err}\nexpected: {needle}");
    }
    let ok = Config::parse(&format!("[server]\nping_path = \"/p\"\n{OK_ACCOUNT}")).unwrap();
    let status = ok.server.status.unwrap();
    assert_eq!(status.ping_path.as_deref(), Some("/p"));
    assert_eq!(status.allowed.len(), 2, "loopback by default");
}

/// No secret is printed in any error: a token or AppSecret written with the wrong type
/// (the type error would quote it), a store URL's password (refused by `check-config`
/// as `serve` refuses it).
#[test]
fn secrets_never_appear_in_errors() {
    let dir = TempDir::new("config-secrets");
    let path = dir.path("c.toml");
    let rows = [
        ("[account]\ntoken = 987654321987\n", "987654321987", "token"),
        (
            "[account]\ntoken = \"abc123\"\nappid = \"wx1\"\nappsecret = 55512345678901\n",
            "55512345678901",
            "appsecret",
        ),
        (
            "[state]\nstore = \"redis://:S3cretPassw0rd@127.0.0.1:99999/0\"\n[account]\ntoken = \"abc123\"\n",
            "S3cretPassw0rd",
            "state",
        ),
        (
            "[state]\nstore = \"rediz://u:S3cretPassw0rd@h/0\"\n[account]\ntoken = \"abc123\"\n",
            "S3cretPassw0rd",
            "state",
        ),
    ];
    for (text, secret, needle) in rows {
        std::fs::write(&path, text).unwrap();
        for command in [
            &["check-config"][..],
            &["serve", "--listen", "tcp:127.0.0.1:1"][..],
        ] {
            let out = Command::new(BIN)
                .args(command)
                .arg("--config")
                .arg(&path)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let output = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command:?} {text}: {output}");
            assert!(output.contains(needle), "{command:?} {text}: {output}");
            assert!(
                !output.contains(secret),
                "{command:?} leaked {secret}: {output}"
            );
        }
    }
}

/// What the server runs or trusts must not be changeable by other users, and the
/// AppSecret never travels in clear: refused by `check-config` and `serve`, naming the
/// file and the fix.
#[test]
fn files_others_could_change_are_refused() {
    fn set_mode(p: &std::path::Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    }
    let ca = rcgen_ca_pem();
    // (name, setup in a fresh folder returning the config's extra lines, needle)
    type Setup = Box<dyn Fn(&TempDir) -> String>;
    let rows: Vec<(&str, Setup, &str)> = vec![
        (
            "a program every user can write",
            Box::new(|d: &TempDir| {
                write_executable(d, "bot.sh", "#!/bin/sh\necho hi\n");
                set_mode(&d.path("bot.sh"), 0o777);
                "[[rule]]\ntext = \"x\"\nrun = { command = [\"./bot.sh\"] }\n".into()
            }),
            "bot.sh: is writable by every user",
        ),
        (
            "a program in a folder every user can write",
            Box::new(|d: &TempDir| {
                std::fs::create_dir(d.path("bin")).unwrap();
                std::fs::write(d.path("bin/bot.sh"), "#!/bin/sh\necho hi\n").unwrap();
                set_mode(&d.path("bin/bot.sh"), 0o755);
                set_mode(&d.path("bin"), 0o777);
                "[[rule]]\ntext = \"x\"\nrun = { command = [\"./bin/bot.sh\"] }\n".into()
            }),
            "is writable by every user (mode 777) and not sticky",
        ),
        (
            "a CA file every user can write",
            Box::new(move |d: &TempDir| {
                std::fs::write(d.path("ca.pem"), &ca).unwrap();
                set_mode(&d.path("ca.pem"), 0o666);
                "appid = \"wx0123456789abcdef\"\nappsecret = \"abc123secret\"\napi_ca_file = \"ca.pem\"\n".into()
            }),
            "api_ca_file",
        ),
        (
            "the AppSecret over plain http",
            Box::new(|_: &TempDir| {
                "appid = \"wx0123456789abcdef\"\nappsecret = \"abc123secret\"\napi_base = \"http://api.example.com\"\n".into()
            }),
            "would travel in clear",
        ),
        (
            "a store file every user can write",
            Box::new(|d: &TempDir| {
                std::fs::write(d.path("state.db"), b"").unwrap();
                set_mode(&d.path("state.db"), 0o666);
                "[state]\nstore = \"sqlite:state.db\"\n".into()
            }),
            "state.db: is writable by every user",
        ),
        (
            "an archive every user can write",
            Box::new(|d: &TempDir| {
                std::fs::write(d.path("a.jsonl"), b"").unwrap();
                set_mode(&d.path("a.jsonl"), 0o666);
                "[archive]\nto = \"jsonl:a.jsonl\"\n".into()
            }),
            "is writable by every user",
        ),
    ];
    for (what, setup, needle) in rows {
        let dir = TempDir::new("config-untrusted");
        set_mode(&dir.0, 0o755);
        let extra = setup(&dir);
        // Keys of [account] first, then the tables.
        let (account_keys, tables) = match extra.find('[') {
            Some(0) => (String::new(), extra),
            Some(i) => (extra[..i].to_owned(), extra[i..].to_owned()),
            None => (extra, String::new()),
        };
        let config = dir.path("c.toml");
        std::fs::write(
            &config,
            format!("[account]\ntoken = \"abc123\"\n{account_keys}{tables}"),
        )
        .unwrap();
        set_mode(&config, 0o600);
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let output = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {output}");
        assert!(output.contains(needle), "{what}: {output}");
    }
    // A config in a folder anyone can write to (and not sticky) is refused; in a
    // sticky one (like /tmp) it is fine.
    let dir = TempDir::new("config-open-folder");
    let config = write_config(&dir, "");
    set_mode(&config, 0o600);
    set_mode(&dir.0, 0o777);
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not sticky"));
    set_mode(&dir.0, 0o1777);
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A FIFO put in the config's place never blocks: check-config, serve and a CGI
/// request refuse it at once.
#[test]
fn a_fifo_as_the_config_is_refused_without_blocking() {
    let dir = TempDir::new("config-fifo");
    let fifo = dir.path("c.toml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let start = std::time::Instant::now();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&fifo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
    let cgi = Command::new(BIN)
        .env_clear()
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", "GET")
        .env("WECHAT_FCGI_CONFIG", &fifo)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&cgi.stdout).starts_with("Status: 503"));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "it blocked"
    );
}

/// A self-signed CA certificate in PEM (a valid file, to fail on its mode only).
fn rcgen_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}
