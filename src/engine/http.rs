//! The HTTP client: reply hooks (`run = { url = .. }`) and WeChat's API
//! (customer-service pushes, the access token). One client per process, so connections
//! are reused; rustls with the built-in web PKI roots plus `account.api_ca_file`.
//!
//! Never from the environment: no `HTTP_PROXY` (in CGI mode a client sets
//! `HTTP_PROXY` with a `Proxy:` header), no redirects. Errors never carry the URL (the
//! API's carries the access token).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::core::reply::Reply;
use crate::core::rules::parse_program_output;

/// Largest hook or API answer read; more is a failure.
pub const MAX_ANSWER_BYTES: usize = super::program::MAX_PROGRAM_OUTPUT;

/// A client trusting the built-in roots and, if given, the CA certificates (PEM) in
/// `ca_file`. Reads the file: call once.
pub fn client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(file) = ca_file {
        let certs = CertificateDer::pem_file_iter(file)
            .map_err(|e| anyhow::anyhow!("account.api_ca_file {}: {e}", file.display()))?;
        let mut added = 0;
        for cert in certs {
            let cert =
                cert.map_err(|e| anyhow::anyhow!("account.api_ca_file {}: {e}", file.display()))?;
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("account.api_ca_file {}: {e}", file.display()))?;
            added += 1;
        }
        if added == 0 {
            anyhow::bail!(
                "account.api_ca_file {}: no PEM certificate in it",
                file.display()
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("wechat-fcgi/", env!("CARGO_PKG_VERSION")))
        .build()?;
    Ok(client)
}

/// The body of a 2xx answer to `request`, at most [`MAX_ANSWER_BYTES`]; `Err` says why
/// not (never with the URL).
pub async fn fetch(request: reqwest::RequestBuilder) -> Result<Vec<u8>, String> {
    let mut response = request
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("answered HTTP {}", status.as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Call a reply hook: POST the message JSON, read the reply in a program's formats.
/// Bounded by `timeout` in all.
pub async fn call_hook(
    client: &reqwest::Client,
    url: &str,
    rule: &str,
    input: Vec<u8>,
    timeout: Duration,
) -> Result<Option<Reply>, String> {
    let request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-WeChat-Rule", rule)
        .body(input);
    match tokio::time::timeout(timeout, fetch(request)).await {
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(body)) => parse_program_output(&body),
    }
}
