//! The XML message parser, and what the server derives from a parsed message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wechat_fcgi::core::message::{self, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let _ = m.retry_key();
        let _ = m.type_label();
        let _ = message::to_json(&m.fields);
    }
});
