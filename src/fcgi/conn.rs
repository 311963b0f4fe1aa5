//! One FastCGI connection as a sans-IO state machine: records in, complete requests and
//! protocol answers out. The server feeds it decoded records and writes what it emits.

use super::params;
use super::record::{self, BeginRequest, Record};
use crate::core::Rejection;

/// Limits the connection enforces while a request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Largest params of one request (431 beyond).
    pub max_params_bytes: usize,
    /// Largest body (413 beyond).
    pub max_body_bytes: usize,
    /// Reported as FCGI_MAX_CONNS and FCGI_MAX_REQS.
    pub max_connections: usize,
}

/// A request whose params and stdin have fully arrived (or that was refused early).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The FastCGI request id.
    pub request_id: u16,
    /// Keep the connection open after answering (FCGI_KEEP_CONN).
    pub keep_conn: bool,
    /// The CGI variables read.
    pub params: HttpParams,
    /// The body, or why the request is refused before the core sees it.
    pub body: Result<Vec<u8>, Rejection>,
}

/// The CGI variables the responder uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpParams {
    /// `REQUEST_METHOD`.
    pub method: String,
    /// `QUERY_STRING`.
    pub query: String,
    /// `CONTENT_LENGTH`, when given and a number.
    pub content_length: Option<usize>,
    /// `DOCUMENT_URI` (nginx), else `SCRIPT_NAME`: which path was asked for.
    pub path: String,
    /// `REMOTE_ADDR`.
    pub remote_addr: String,
    /// `HTTP_ACCEPT`.
    pub accept: String,
}

/// What one record did to the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Taken in; the request is not complete yet (or a management record was answered).
    Continue,
    /// A request is complete, or refused early: answer it.
    Ready(Ready),
    /// The client aborted its request; its END_REQUEST is already in the output.
    Aborted(u16),
    /// A record ignored as the spec says (e.g. STDIN for an id never begun); any
    /// protocol answer (UNKNOWN_TYPE, CANT_MPX_CONN, UNKNOWN_ROLE) is in the output.
    Ignored(String),
    /// The connection cannot go on (e.g. a malformed BEGIN_REQUEST): close it.
    Close(String),
}

/// State of one connection: at most one request at a time (FCGI_MPXS_CONNS = 0).
#[derive(Debug)]
pub struct Connection {
    limits: ConnLimits,
    active: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    id: u16,
    keep_conn: bool,
    params: Vec<u8>,
    decoded: Option<HttpParams>,
    stdin: Vec<u8>,
    /// Refused before it fully arrived (too large, malformed): the rest of its PARAMS
    /// and STDIN is read and dropped, and the refusal answered when its STDIN ends. A
    /// web server still sending the body (Apache, Caddy) would turn a connection closed
    /// under it into a 500 or 502.
    refused: Option<Rejection>,
}

impl Connection {
    /// A connection with no request yet.
    pub fn new(limits: ConnLimits) -> Connection {
        Connection {
            limits,
            active: None,
        }
    }

    /// Bytes the active request's body still needs (with the headers of the records
    /// carrying it and their padding), as far as its CONTENT_LENGTH tells; 0 when
    /// unknown or none.
    pub fn body_remaining(&self) -> usize {
        let Some(p) = &self.active else { return 0 };
        match p.decoded.as_ref().and_then(|h| h.content_length) {
            Some(len) if len > p.stdin.len() => {
                let rest = len - p.stdin.len();
                rest + (rest / record::MAX_CONTENT + 2) * (record::HEADER_LEN + 8)
            }
            _ => 0,
        }
    }

    /// Whether a request has begun and not yet been handed out.
    pub fn in_request(&self) -> bool {
        self.active.is_some()
    }

    /// Give up on the request in progress (its read timeout passed): what to answer
    /// it with (its refusal, or 408), never keeping the connection.
    pub fn abandon(&mut self) -> Option<Ready> {
        let p = self.active.take()?;
        Some(Ready {
            request_id: p.id,
            keep_conn: false,
            params: p.decoded.unwrap_or_default(),
            body: Err(p.refused.unwrap_or(Rejection::ReadTimeout)),
        })
    }

    /// Take one record. Protocol answers (GET_VALUES_RESULT, UNKNOWN_TYPE, END_REQUEST for
    /// refused or aborted requests) are appended to `out`.
    pub fn on_record(&mut self, rec: Record<'_>, out: &mut Vec<u8>) -> Progress {
        if rec.request_id == 0 {
            return self.on_management(rec, out);
        }
        match rec.record_type {
            record::BEGIN_REQUEST => self.on_begin(rec, out),
            record::ABORT_REQUEST => {
                if self.is_active(rec.request_id) {
                    self.active = None;
                    record::write_end_request(out, rec.request_id, 0, record::REQUEST_COMPLETE);
                    Progress::Aborted(rec.request_id)
                } else {
                    Progress::Ignored(format!("ABORT_REQUEST for inactive id {}", rec.request_id))
                }
            }
            record::PARAMS => self.on_params(rec),
            record::STDIN => self.on_stdin(rec),
            other => Progress::Ignored(format!(
                "record type {other} for request {} is not for an application",
                rec.request_id
            )),
        }
    }

    fn is_active(&self, id: u16) -> bool {
        matches!(&self.active, Some(p) if p.id == id)
    }

    fn on_management(&mut self, rec: Record<'_>, out: &mut Vec<u8>) -> Progress {
        if rec.record_type != record::GET_VALUES {
            record::write_unknown_type(out, rec.record_type);
            return Progress::Ignored(format!(
                "management record type {} answered with UNKNOWN_TYPE",
                rec.record_type
            ));
        }
        let mut digits = itoa::Buffer::new();
        let max = digits.format(self.limits.max_connections);
        let mut answer = Vec::new();
        for pair in params::pairs(rec.content) {
            let Ok((name, _)) = pair else {
                break;
            };
            let value: &[u8] = match name {
                b"FCGI_MAX_CONNS" | b"FCGI_MAX_REQS" => max.as_bytes(),
                b"FCGI_MPXS_CONNS" => b"0",
                _ => continue,
            };
            params::write_pair(&mut answer, name, value);
        }
        record::write_record(out, record::GET_VALUES_RESULT, 0, &answer);
        Progress::Continue
    }

    fn on_begin(&mut self, rec: Record<'_>, out: &mut Vec<u8>) -> Progress {
        let Some(begin) = BeginRequest::parse(rec.content) else {
            return Progress::Close(format!(
                "BEGIN_REQUEST for request {} has a {}-byte body, expected 8",
                rec.request_id,
                rec.content.len()
            ));
        };
        if let Some(active) = &self.active {
            if active.id == rec.request_id {
                return Progress::Ignored(format!(
                    "second BEGIN_REQUEST for active request {}",
                    rec.request_id
                ));
            }
            record::write_end_request(out, rec.request_id, 0, record::CANT_MPX_CONN);
            return Progress::Ignored(format!(
                "BEGIN_REQUEST for request {} while {} is active: CANT_MPX_CONN",
                rec.request_id, active.id
            ));
        }
        if begin.role != record::ROLE_RESPONDER {
            record::write_end_request(out, rec.request_id, 0, record::UNKNOWN_ROLE);
            return Progress::Ignored(format!(
                "request {} asks for role {}, only Responder (1) is served: UNKNOWN_ROLE",
                rec.request_id, begin.role
            ));
        }
        self.active = Some(Pending {
            id: rec.request_id,
            keep_conn: begin.keep_conn(),
            params: Vec::new(),
            decoded: None,
            stdin: Vec::new(),
            refused: None,
        });
        Progress::Continue
    }

    fn on_params(&mut self, rec: Record<'_>) -> Progress {
        let limits = self.limits;
        let Some(p) = self.active.as_mut().filter(|p| p.id == rec.request_id) else {
            return Progress::Ignored(format!("PARAMS for inactive request {}", rec.request_id));
        };
        if p.refused.is_some() {
            return Progress::Continue; // dropped: the request is refused already
        }
        if p.decoded.is_some() {
            return Progress::Ignored(format!(
                "PARAMS after the end of params for request {}",
                rec.request_id
            ));
        }
        if !rec.content.is_empty() {
            if p.params.len() + rec.content.len() > limits.max_params_bytes {
                return self.refuse(Rejection::ParamsTooLarge {
                    limit: limits.max_params_bytes,
                });
            }
            p.params.extend_from_slice(rec.content);
            return Progress::Continue;
        }
        // End of params: decode them once.
        let mut http = HttpParams::default();
        let mut refusal = None;
        for pair in params::pairs(&p.params) {
            let Ok((name, value)) = pair else {
                refusal = Some(Rejection::BadParams);
                break;
            };
            let text = || String::from_utf8_lossy(value).into_owned();
            match name {
                b"REQUEST_METHOD" => http.method = text(),
                b"QUERY_STRING" => http.query = text(),
                b"DOCUMENT_URI" => http.path = text(),
                b"SCRIPT_NAME" if http.path.is_empty() => http.path = text(),
                b"REMOTE_ADDR" => http.remote_addr = text(),
                b"HTTP_ACCEPT" => http.accept = text(),
                b"CONTENT_LENGTH" => match parse_content_length(value) {
                    Ok(len) => http.content_length = len,
                    Err(rejection) => refusal = Some(rejection),
                },
                _ => {}
            }
        }
        p.params = Vec::new();
        p.decoded = Some(http);
        if let Some(rejection) = refusal {
            return self.refuse(rejection);
        }
        if let Some(len) = p.decoded.as_ref().and_then(|h| h.content_length) {
            if len > limits.max_body_bytes {
                return self.refuse(Rejection::BodyTooLarge {
                    limit: limits.max_body_bytes,
                });
            }
            // Within the limit: room for the whole body at once.
            p.stdin.reserve_exact(len);
        }
        Progress::Continue
    }

    fn on_stdin(&mut self, rec: Record<'_>) -> Progress {
        let limits = self.limits;
        let Some(p) = self.active.as_mut().filter(|p| p.id == rec.request_id) else {
            return Progress::Ignored(format!("STDIN for inactive request {}", rec.request_id));
        };
        if p.refused.is_some() {
            if !rec.content.is_empty() {
                return Progress::Continue; // dropped: the request is refused already
            }
            // The body is all in: answer the refusal, and the connection goes on.
            return match self.active.take() {
                Some(p) => Progress::Ready(Ready {
                    request_id: p.id,
                    keep_conn: p.keep_conn,
                    params: p.decoded.unwrap_or_default(),
                    body: Err(p.refused.unwrap_or(Rejection::BadParams)),
                }),
                None => Progress::Continue,
            };
        }
        if p.decoded.is_none() {
            return Progress::Close(format!(
                "STDIN before the end of PARAMS for request {}",
                rec.request_id
            ));
        }
        if !rec.content.is_empty() {
            if p.stdin.len() + rec.content.len() > limits.max_body_bytes {
                return self.refuse(Rejection::BodyTooLarge {
                    limit: limits.max_body_bytes,
                });
            }
            p.stdin.extend_from_slice(rec.content);
            return Progress::Continue;
        }
        let Some(p) = self.active.take() else {
            return Progress::Continue; // unreachable: checked above
        };
        let params = p.decoded.unwrap_or_default();
        let body = match params.content_length {
            Some(len) if len != p.stdin.len() => Err(Rejection::BodyLength {
                expected: len,
                got: p.stdin.len(),
            }),
            _ => Ok(p.stdin),
        };
        Progress::Ready(Ready {
            request_id: p.id,
            keep_conn: p.keep_conn,
            params,
            body,
        })
    }

    /// Refuse the active request: nothing more of it is kept, the rest of it is read
    /// and dropped, and the refusal is answered when its STDIN ends (or at its read
    /// timeout).
    fn refuse(&mut self, rejection: Rejection) -> Progress {
        if let Some(p) = self.active.as_mut() {
            p.params = Vec::new();
            p.stdin = Vec::new();
            p.refused = Some(rejection);
        }
        Progress::Continue
    }
}

/// `CONTENT_LENGTH` as both shells read it: absent or empty is no body; otherwise a
/// decimal number of bytes (surrounding spaces allowed), or the request is refused.
pub fn parse_content_length(value: &[u8]) -> Result<Option<usize>, Rejection> {
    let text = std::str::from_utf8(value).map_err(|_| Rejection::BadContentLength)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::BadContentLength);
    }
    text.parse()
        .map(Some)
        .map_err(|_| Rejection::BadContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(conn: &mut Connection, record_type: u8, content: &[u8]) -> Option<Ready> {
        let mut out = Vec::new();
        let rec = Record {
            record_type,
            request_id: 1,
            content,
        };
        match conn.on_record(rec, &mut out) {
            Progress::Continue => None,
            Progress::Ready(ready) => Some(ready),
            other => panic!("not accepted: {other:?}"),
        }
    }

    /// What a record did, reduced to what the table compares.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Continue,
        /// A complete request: its id and body (or the refusal's code).
        Ready(u16, Result<Vec<u8>, &'static str>),
        Aborted(u16),
        Ignored,
        Close,
    }

    /// Protocol output, decoded: (record type, request id, END_REQUEST's protocol
    /// status or UNKNOWN_TYPE's type).
    type Out = (u8, u16, u8);

    const B: u8 = record::BEGIN_REQUEST;
    const P: u8 = record::PARAMS;
    const S: u8 = record::STDIN;
    const A: u8 = record::ABORT_REQUEST;

    fn begin(role: u16) -> Vec<u8> {
        let r = role.to_be_bytes();
        vec![r[0], r[1], 1, 0, 0, 0, 0, 0]
    }

    fn params_with(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (k, v) in pairs {
            params::write_pair(&mut p, k.as_bytes(), v.as_bytes());
        }
        p
    }

    fn run(records: &[(u8, u16, Vec<u8>)]) -> (Vec<Got>, Vec<Out>) {
        let mut conn = Connection::new(ConnLimits {
            max_params_bytes: 256,
            max_body_bytes: 100,
            max_connections: 7,
        });
        let mut out = Vec::new();
        let mut got = Vec::new();
        for (record_type, request_id, content) in records {
            let rec = Record {
                record_type: *record_type,
                request_id: *request_id,
                content,
            };
            got.push(match conn.on_record(rec, &mut out) {
                Progress::Continue => Got::Continue,
                Progress::Ready(r) => Got::Ready(r.request_id, r.body.map_err(|e| e.code())),
                Progress::Aborted(id) => Got::Aborted(id),
                Progress::Ignored(_) => Got::Ignored,
                Progress::Close(_) => Got::Close,
            });
        }
        let mut written = Vec::new();
        let mut pos = 0;
        while let Ok(Some((rec, used))) = record::decode(&out[pos..]) {
            pos += used;
            let detail = match rec.record_type {
                record::END_REQUEST => rec.content[4],
                record::UNKNOWN_TYPE => rec.content[0],
                _ => 0,
            };
            written.push((rec.record_type, rec.request_id, detail));
        }
        assert_eq!(pos, out.len(), "only whole records are written");
        (got, written)
    }

    #[test]
    fn state_machine_table() {
        use Got::*;
        let ok_params = params_with(&[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "3")]);
        let end_complete = (record::END_REQUEST, 1, record::REQUEST_COMPLETE);
        type Row = (&'static str, Vec<(u8, u16, Vec<u8>)>, Vec<Got>, Vec<Out>);
        let rows: Vec<Row> = vec![
            (
                "a whole request",
                vec![
                    (B, 1, begin(1)),
                    (P, 1, ok_params.clone()),
                    (P, 1, vec![]),
                    (S, 1, b"abc".to_vec()),
                    (S, 1, vec![]),
                ],
                vec![
                    Continue,
                    Continue,
                    Continue,
                    Continue,
                    Ready(1, Ok(b"abc".to_vec())),
                ],
                vec![],
            ),
            (
                "GET_VALUES is answered, unknown names left out",
                vec![(
                    record::GET_VALUES,
                    0,
                    params_with(&[
                        ("FCGI_MAX_CONNS", ""),
                        ("FCGI_MPXS_CONNS", ""),
                        ("OTHER", ""),
                    ]),
                )],
                vec![Continue],
                vec![(record::GET_VALUES_RESULT, 0, 0)],
            ),
            (
                "an unknown management record gets UNKNOWN_TYPE",
                vec![(77, 0, vec![])],
                vec![Ignored],
                vec![(record::UNKNOWN_TYPE, 0, 77)],
            ),
            (
                "a BEGIN_REQUEST body that is not 8 bytes closes the connection",
                vec![(B, 1, vec![0, 1, 1])],
                vec![Close],
                vec![],
            ),
            (
                "roles other than Responder get UNKNOWN_ROLE",
                vec![
                    (B, 1, begin(record::ROLE_AUTHORIZER)),
                    (B, 2, begin(record::ROLE_FILTER)),
                ],
                vec![Ignored, Ignored],
                vec![
                    (record::END_REQUEST, 1, record::UNKNOWN_ROLE),
                    (record::END_REQUEST, 2, record::UNKNOWN_ROLE),
                ],
            ),
            (
                "a second request id while one is active gets CANT_MPX_CONN",
                vec![(B, 1, begin(1)), (B, 2, begin(1)), (B, 1, begin(1))],
                vec![Continue, Ignored, Ignored],
                vec![(record::END_REQUEST, 2, record::CANT_MPX_CONN)],
            ),
            (
                "ABORT ends the active request with one END_REQUEST; again, it is ignored",
                vec![
                    (B, 1, begin(1)),
                    (A, 1, vec![]),
                    (A, 1, vec![]),
                    (S, 1, b"x".to_vec()),
                ],
                vec![Continue, Aborted(1), Ignored, Ignored],
                vec![end_complete],
            ),
            (
                "records for an id never begun are ignored",
                vec![
                    (P, 3, ok_params.clone()),
                    (S, 3, vec![]),
                    (A, 3, vec![]),
                    (record::DATA, 3, vec![]),
                ],
                vec![Ignored, Ignored, Ignored, Ignored],
                vec![],
            ),
            (
                "STDIN before the end of PARAMS closes the connection",
                vec![
                    (B, 1, begin(1)),
                    (P, 1, ok_params.clone()),
                    (S, 1, b"abc".to_vec()),
                ],
                vec![Continue, Continue, Close],
                vec![],
            ),
            (
                "PARAMS after their end are ignored",
                vec![(B, 1, begin(1)), (P, 1, vec![]), (P, 1, ok_params.clone())],
                vec![Continue, Continue, Ignored],
                vec![],
            ),
            (
                "params over max_params_bytes: the rest is dropped, 431 when STDIN ends",
                vec![
                    (B, 1, begin(1)),
                    (P, 1, params_with(&[("HTTP_X", &"x".repeat(300))])),
                    (P, 1, params_with(&[("HTTP_Y", &"y".repeat(300))])),
                    (P, 1, vec![]),
                    (S, 1, b"abc".to_vec()),
                    (S, 1, vec![]),
                ],
                vec![
                    Continue,
                    Continue,
                    Continue,
                    Continue,
                    Continue,
                    Ready(1, Err("params_too_large")),
                ],
                vec![],
            ),
            (
                "CONTENT_LENGTH over max_body_bytes: the body is dropped unstored, then 413",
                vec![
                    (B, 1, begin(1)),
                    (P, 1, params_with(&[("CONTENT_LENGTH", "250")])),
                    (P, 1, vec![]),
                    (S, 1, vec![b'x'; 125]),
                    (S, 1, vec![b'x'; 125]),
                    (S, 1, vec![]),
                ],
                vec![
                    Continue,
                    Continue,
                    Continue,
                    Continue,
                    Continue,
                    Ready(1, Err("body_too_large")),
                ],
                vec![],
            ),
            (
                "CONTENT_LENGTH that is not a number",
                vec![
                    (B, 1, begin(1)),
                    (P, 1, params_with(&[("CONTENT_LENGTH", "3x")])),
                    (P, 1, vec![]),
                    (S, 1, b"abc".to_vec()),
                    (S, 1, vec![]),
                ],
                vec![
                    Continue,
                    Continue,
                    Continue,
                    Continue,
                    Ready(1, Err("bad_content_length")),
                ],
                vec![],
            ),
            (
                "a refused request still answers ABORT and CANT_MPX_CONN",
                vec![
                    (B, 1, begin(1)),
                    (P, 1, params_with(&[("CONTENT_LENGTH", "999")])),
                    (P, 1, vec![]),
                    (B, 2, begin(1)),
                    (A, 1, vec![]),
                ],
                vec![Continue, Continue, Continue, Ignored, Aborted(1)],
                vec![
                    (record::END_REQUEST, 2, record::CANT_MPX_CONN),
                    end_complete,
                ],
            ),
            (
                "an empty CONTENT_LENGTH is no body",
                vec![
                    (B, 1, begin(1)),
                    (P, 1, params_with(&[("CONTENT_LENGTH", "")])),
                    (P, 1, vec![]),
                    (S, 1, vec![]),
                ],
                vec![Continue, Continue, Continue, Ready(1, Ok(vec![]))],
                vec![],
            ),
            (
                "a body shorter than CONTENT_LENGTH",
                vec![
                    (B, 1, begin(1)),
                    (P, 1, ok_params.clone()),
                    (P, 1, vec![]),
                    (S, 1, b"ab".to_vec()),
                    (S, 1, vec![]),
                ],
                vec![
                    Continue,
                    Continue,
                    Continue,
                    Continue,
                    Ready(1, Err("body_length")),
                ],
                vec![],
            ),
            (
                "a body over max_body_bytes without CONTENT_LENGTH: 413 when it ends",
                vec![
                    (B, 1, begin(1)),
                    (P, 1, vec![]),
                    (S, 1, vec![b'x'; 60]),
                    (S, 1, vec![b'x'; 60]),
                    (S, 1, vec![]),
                ],
                vec![
                    Continue,
                    Continue,
                    Continue,
                    Continue,
                    Ready(1, Err("body_too_large")),
                ],
                vec![],
            ),
            (
                "params that do not decode",
                vec![
                    (B, 1, begin(1)),
                    (P, 1, vec![0x80, 0, 0, 9, 1, b'a']),
                    (P, 1, vec![]),
                    (S, 1, vec![]),
                ],
                vec![Continue, Continue, Continue, Ready(1, Err("bad_params"))],
                vec![],
            ),
            (
                "record types not for an application are ignored",
                vec![
                    (B, 1, begin(1)),
                    (record::STDOUT, 1, b"x".to_vec()),
                    (record::GET_VALUES_RESULT, 1, vec![]),
                ],
                vec![Continue, Ignored, Ignored],
                vec![],
            ),
            (
                "after a request, the next one on the connection",
                vec![
                    (B, 1, begin(1)),
                    (P, 1, vec![]),
                    (S, 1, vec![]),
                    (B, 2, begin(1)),
                    (P, 2, vec![]),
                    (S, 2, vec![]),
                ],
                vec![
                    Continue,
                    Continue,
                    Ready(1, Ok(vec![])),
                    Continue,
                    Continue,
                    Ready(2, Ok(vec![])),
                ],
                vec![],
            ),
        ];
        for (what, records, want, want_out) in rows {
            let (got, out) = run(&records);
            assert_eq!(got, want, "{what}");
            assert_eq!(out, want_out, "{what}: output");
        }
    }

    #[test]
    fn content_length_table() {
        type Row = (&'static [u8], Result<Option<usize>, Rejection>);
        let rows: &[Row] = &[
            (b"", Ok(None)),
            (b"  ", Ok(None)),
            (b"0", Ok(Some(0))),
            (b" 42 ", Ok(Some(42))),
            (b"+5", Err(Rejection::BadContentLength)),
            (b"-1", Err(Rejection::BadContentLength)),
            (b"1e3", Err(Rejection::BadContentLength)),
            (b"99999999999999999999999", Err(Rejection::BadContentLength)),
            (b"\xff", Err(Rejection::BadContentLength)),
        ];
        for (value, want) in rows {
            assert_eq!(&parse_content_length(value), want, "{value:?}");
        }
    }

    #[test]
    fn body_remaining_follows_content_length() {
        let mut conn = Connection::new(ConnLimits {
            max_params_bytes: 4096,
            max_body_bytes: 1 << 20,
            max_connections: 1,
        });
        assert_eq!(conn.body_remaining(), 0, "no request");
        feed(&mut conn, record::BEGIN_REQUEST, &[0, 1, 1, 0, 0, 0, 0, 0]);
        let mut p = Vec::new();
        params::write_pair(&mut p, b"CONTENT_LENGTH", b"100000");
        feed(&mut conn, record::PARAMS, &p);
        assert_eq!(conn.body_remaining(), 0, "params not complete yet");
        feed(&mut conn, record::PARAMS, b"");
        // 100 000 bytes take two records, plus the empty one; each up to 16 bytes more.
        assert_eq!(conn.body_remaining(), 100_000 + 3 * 16);
        feed(&mut conn, record::STDIN, &[b'x'; 65_535]);
        assert_eq!(conn.body_remaining(), 34_465 + 2 * 16);
        feed(&mut conn, record::STDIN, &[b'x'; 34_465]);
        assert_eq!(conn.body_remaining(), 0, "all there");
        let ready = feed(&mut conn, record::STDIN, b"").expect("complete");
        assert_eq!(ready.body.map(|b| b.len()), Ok(100_000));
        assert_eq!(conn.body_remaining(), 0);
    }
}
