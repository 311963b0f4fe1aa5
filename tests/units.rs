//! The shipped systemd units: sandboxed (`systemd-analyze security` rates them 3.0 or
//! lower), running as the wechat-fcgi user with the config checked before start.

mod common;

/// The overall exposure `systemd-analyze security --offline=true` gives a unit.
fn exposure(unit: &str) -> f64 {
    let dir = common::TempDir::new("units");
    let path = dir.path("wechat-fcgi.service");
    std::fs::copy(format!("{}/{unit}", env!("CARGO_MANIFEST_DIR")), &path).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/test.sh installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}"));
    line.split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn both_units_are_sandboxed_and_run_as_the_service_user() {
    for unit in [
        "conf/wechat-fcgi.service",
        "conf/debian/wechat-fcgi.service",
    ] {
        let score = exposure(unit);
        assert!(score <= 3.0, "{unit}: exposure {score}");
        let text =
            std::fs::read_to_string(format!("{}/{unit}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(text.contains("\nUser=wechat-fcgi\n"), "{unit}");
        assert!(
            !text.contains("DynamicUser"),
            "{unit}: the config is root:wechat-fcgi 0640"
        );
        assert!(
            text.contains("check-config --config /etc/wechat-fcgi/wechat-fcgi.toml"),
            "{unit}"
        );
    }
}
