//! The FastCGI name-value pair decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wechat_fcgi::fcgi::params;

fuzz_target!(|data: &[u8]| {
    let mut total = 0;
    for pair in params::pairs(data) {
        match pair {
            Ok((name, value)) => total += name.len() + value.len(),
            Err(_) => break,
        }
    }
    assert!(total <= data.len());
});
