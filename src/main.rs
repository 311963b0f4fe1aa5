//! The `wechat-fcgi` binary: everything is in the library; this reports errors.

use std::process::ExitCode;

/// mimalloc 2 without transparent huge pages. Measured against the system allocator
/// (BENCHMARKS.md): less CPU per request in `serve`, the same start-up cost in CGI mode
/// (mimalloc 3, or huge pages, cost 0.3 to 1 ms and 1 to 6 MiB more per CGI process).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match wechat_fcgi::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wechat-fcgi: {e:#}");
            ExitCode::from(1)
        }
    }
}
