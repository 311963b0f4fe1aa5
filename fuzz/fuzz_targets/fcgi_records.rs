//! The FastCGI record decoder and connection state machine, driven as the server drives
//! them: decode records from the front of the buffer, feed each to the connection.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wechat_fcgi::fcgi::conn::{ConnLimits, Connection, Progress};
use wechat_fcgi::fcgi::record;

fuzz_target!(|data: &[u8]| {
    let mut conn = Connection::new(ConnLimits {
        max_params_bytes: 4096,
        max_body_bytes: 8192,
        max_connections: 16,
    });
    let mut out = Vec::new();
    let mut used = 0;
    while let Ok(Some((rec, len))) = record::decode(&data[used..]) {
        used += len;
        if let Progress::Ready(ready) = conn.on_record(rec, &mut out) {
            if let Ok(body) = &ready.body {
                assert!(body.len() <= 8192);
            }
        }
    }
    assert!(used <= data.len());
});
