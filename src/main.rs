//! The `wechat-fcgi` binary: everything is in the library; this reports errors.

use std::process::ExitCode;

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
