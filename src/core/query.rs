//! The callback's query string: the signed parameters WeChat adds to the URL.

use super::error::Rejection;

/// The parameters WeChat puts on the callback URL. Unknown keys are ignored; a signed
/// key given twice is refused (which of the two would be checked is ambiguous).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CallbackQuery {
    pub signature: Option<String>,
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub echostr: Option<String>,
    pub openid: Option<String>,
    pub encrypt_type: Option<String>,
    pub msg_signature: Option<String>,
}

impl CallbackQuery {
    /// Parse an `application/x-www-form-urlencoded` query string (without the `?`).
    pub fn parse(query: &str) -> Result<CallbackQuery, Rejection> {
        let mut q = CallbackQuery::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let (slot, name) = match key.as_ref() {
                "signature" => (&mut q.signature, "signature"),
                "timestamp" => (&mut q.timestamp, "timestamp"),
                "nonce" => (&mut q.nonce, "nonce"),
                "echostr" => (&mut q.echostr, "echostr"),
                "openid" => (&mut q.openid, "openid"),
                "encrypt_type" => (&mut q.encrypt_type, "encrypt_type"),
                "msg_signature" => (&mut q.msg_signature, "msg_signature"),
                _ => continue,
            };
            if slot.is_some() {
                return Err(Rejection::DuplicateParam(name));
            }
            *slot = Some(value.into_owned());
        }
        Ok(q)
    }

    /// The three values the plain `signature` is computed over, or which one is missing.
    pub fn signed_triple(&self) -> Result<(&str, &str, &str), Rejection> {
        let signature = self
            .signature
            .as_deref()
            .ok_or(Rejection::MissingParam("signature"))?;
        let timestamp = self
            .timestamp
            .as_deref()
            .ok_or(Rejection::MissingParam("timestamp"))?;
        let nonce = self
            .nonce
            .as_deref()
            .ok_or(Rejection::MissingParam("nonce"))?;
        Ok((signature, timestamp, nonce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        type Row = (&'static str, Result<CallbackQuery, Rejection>);
        let full = CallbackQuery {
            signature: Some("abc".into()),
            timestamp: Some("1".into()),
            nonce: Some("2".into()),
            echostr: Some("hi there".into()),
            ..Default::default()
        };
        let rows: Vec<Row> = vec![
            (
                "signature=abc&timestamp=1&nonce=2&echostr=hi+there",
                Ok(full.clone()),
            ),
            (
                "echostr=hi%20there&x=y&signature=abc&timestamp=1&nonce=2",
                Ok(full),
            ),
            ("", Ok(CallbackQuery::default())),
            (
                "signature",
                Ok(CallbackQuery {
                    signature: Some(String::new()),
                    ..Default::default()
                }),
            ),
            (
                "signature=a&signature=b",
                Err(Rejection::DuplicateParam("signature")),
            ),
            ("nonce=1&nonce=1", Err(Rejection::DuplicateParam("nonce"))),
            (
                "openid=o1&encrypt_type=aes&msg_signature=m",
                Ok(CallbackQuery {
                    openid: Some("o1".into()),
                    encrypt_type: Some("aes".into()),
                    msg_signature: Some("m".into()),
                    ..Default::default()
                }),
            ),
        ];
        for (query, expected) in rows {
            assert_eq!(CallbackQuery::parse(query), expected, "{query:?}");
        }
    }

    #[test]
    fn signed_triple_names_missing_key() {
        let rows = [
            ("timestamp=1&nonce=2", "signature"),
            ("signature=s&nonce=2", "timestamp"),
            ("signature=s&timestamp=1", "nonce"),
        ];
        for (query, missing) in rows {
            let q = CallbackQuery::parse(query).unwrap();
            assert_eq!(q.signed_triple(), Err(Rejection::MissingParam(missing)));
        }
    }
}
