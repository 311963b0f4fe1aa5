//! Apache httpd in front, from Debian's packages, started on a free loopback port:
//! mod_proxy_fcgi to a running server (conf/apache.conf's recipe).

mod common;
use common::*;

use std::process::Command;

const MODULES: &str = "/usr/lib/apache2/modules";

/// Start apache2 in the foreground with these extra directives; returns it and its port.
fn start_apache(dir: &TempDir, directives: &str) -> (Proc, u16) {
    let port = free_port();
    let root = dir.0.display();
    let conf = format!(
        r#"LoadModule mpm_event_module {MODULES}/mod_mpm_event.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
LoadModule proxy_module {MODULES}/mod_proxy.so
LoadModule proxy_fcgi_module {MODULES}/mod_proxy_fcgi.so
ServerName localhost
ServerRoot {root}
PidFile {root}/apache.pid
ErrorLog {root}/apache-error.log
LogLevel warn
Listen 127.0.0.1:{port}
User nobody
Group nogroup
StartServers 1
ServerLimit 1
ThreadsPerChild 25
MaxRequestWorkers 25
{directives}
"#
    );
    let conf_path = dir.path("apache.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new("/usr/sbin/apache2");
    cmd.arg("-f").arg(&conf_path).arg("-DFOREGROUND");
    let apache = start_web_server(dir, cmd, port, "apache-error.log");
    (apache, port)
}

#[test]
fn apache_mod_proxy_fcgi() {
    let dir = TempDir::new("apache-proxy-fcgi");
    let config = write_config(&dir, &format!("[server]\nmax_body_bytes = 300000\n{RULES}"));
    let (server, fcgi) = start_server(&dir, &config);
    // enablereuse=on keeps the FastCGI connection, as nginx's keepalive does.
    let (_apache, port) = start_apache(
        &dir,
        &format!(r#"ProxyPass "/wechat" "fcgi://{fcgi}/" enablereuse=on"#),
    );
    front_end_checks(port, "/wechat");
    wait_for_log(&server, "body_too_large");
}

#[test]
fn apache_mod_fcgid_starts_the_binary() {
    let dir = TempDir::new("apache-fcgid");
    let config = write_config(&dir, &format!("[server]\nmax_body_bytes = 300000\n{RULES}"));
    // mod_fcgid's process manager (Apache's user) binds its sockets in this folder.
    std::fs::create_dir_all(dir.path("fcgid")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path("fcgid"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Apache's user must reach the binary: the checkout may sit under a private folder.
    let binary = dir.path("wechat-fcgi");
    std::fs::copy(BIN, &binary).unwrap();
    let root = dir.0.display();
    let (apache, port) = start_apache(
        &dir,
        &format!(
            r#"LoadModule alias_module {MODULES}/mod_alias.so
LoadModule fcgid_module {MODULES}/mod_fcgid.so
FcgidIPCDir {root}/fcgid
FcgidProcessTableFile {root}/fcgid/shm
FcgidInitialEnv WECHAT_FCGI_CONFIG {config}
FcgidInitialEnv WECHAT_FCGI_LOG warn
FcgidMaxRequestLen 1048576
<Directory />
    AllowOverride None
</Directory>
Alias /wechat {binary}
<Location /wechat>
    SetHandler fcgid-script
    Options +ExecCGI
    Require all granted
</Location>"#,
            config = config.display(),
            binary = binary.display()
        ),
    );
    front_end_checks(port, "/wechat");
    drop(apache);
}

/// Shared hosting: mod_cgid runs the binary as a CGI program from a folder whose
/// `.htaccess` enables it (conf/apache.conf, recipe 3), with the config named by
/// `SetEnv` and the log quiet (WARN) in Apache's error log.
#[test]
fn apache_mod_cgi_with_htaccess() {
    let dir = TempDir::new("apache-cgi");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(&dir, &format!("[server]\nmax_body_bytes = 300000\n{RULES}"));
    let public = dir.path("public");
    std::fs::create_dir_all(&public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(BIN, public.join("wechat.cgi")).unwrap();
    std::fs::write(
        public.join(".htaccess"),
        format!(
            "Options +ExecCGI\nAddHandler cgi-script .cgi\nSetEnv WECHAT_FCGI_CONFIG {}\n",
            config.display()
        ),
    )
    .unwrap();
    let root = dir.0.display();
    let (apache, port) = start_apache(
        &dir,
        &format!(
            r#"LoadModule cgid_module {MODULES}/mod_cgid.so
LoadModule mime_module {MODULES}/mod_mime.so
LoadModule env_module {MODULES}/mod_env.so
TypesConfig /dev/null
ScriptSock {root}/cgid.sock
DocumentRoot {root}/public
<Directory />
    AllowOverride None
</Directory>
<Directory {root}/public>
    AllowOverride FileInfo Options
    Require all granted
</Directory>"#
        ),
    );
    front_end_checks(port, "/wechat.cgi");
    // CGI mode logs WARN and up: refusals reach Apache's error log, request lines do not.
    let start = std::time::Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(dir.path("apache-error.log")).unwrap_or_default();
        if log.contains("request refused") || start.elapsed() > std::time::Duration::from_secs(10) {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(log.contains("request refused"), "{log}");
    assert!(!log.contains("INFO request"), "{log}");
    drop(apache);
}
