//! The FastCGI record codec (FastCGI 1.0 spec §3): 8-byte headers, content, padding.
// The protocol constants are named as in the FastCGI 1.0 specification (section 8),
// which documents them.
#![allow(missing_docs)]

/// The only protocol version.
pub const VERSION_1: u8 = 1;
/// Size of a record header.
pub const HEADER_LEN: usize = 8;
/// Largest content one record carries.
pub const MAX_CONTENT: usize = 65535;

pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const DATA: u8 = 8;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;

/// Roles in BEGIN_REQUEST.
pub const ROLE_RESPONDER: u16 = 1;
pub const ROLE_AUTHORIZER: u16 = 2;
pub const ROLE_FILTER: u16 = 3;

/// BEGIN_REQUEST flag: keep the connection open after this request.
pub const FLAG_KEEP_CONN: u8 = 1;

/// END_REQUEST protocol status values.
pub const REQUEST_COMPLETE: u8 = 0;
pub const CANT_MPX_CONN: u8 = 1;
pub const OVERLOADED: u8 = 2;
pub const UNKNOWN_ROLE: u8 = 3;

/// One record, borrowing its content from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub record_type: u8,
    pub request_id: u16,
    pub content: &'a [u8],
}

/// A record that cannot be decoded; the stream cannot be resynchronised after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The header's version byte is not 1.
    Version(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Version(v) => write!(f, "record version {v}, expected 1"),
        }
    }
}

/// Decode one record from the front of `buf`: the record and the bytes it used
/// (header + content + padding), or `None` when more bytes are needed.
pub fn decode(buf: &[u8]) -> Result<Option<(Record<'_>, usize)>, DecodeError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    if header[0] != VERSION_1 {
        return Err(DecodeError::Version(header[0]));
    }
    let request_id = u16::from_be_bytes([header[2], header[3]]);
    let content_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let total = HEADER_LEN + content_len + usize::from(header[6]);
    if buf.len() < total {
        return Ok(None);
    }
    let content = &buf[HEADER_LEN..HEADER_LEN + content_len];
    Ok(Some((
        Record {
            record_type: header[1],
            request_id,
            content,
        },
        total,
    )))
}

/// BEGIN_REQUEST's body: the role and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginRequest {
    pub role: u16,
    pub flags: u8,
}

impl BeginRequest {
    /// Parse the 8-byte body; any other length is malformed.
    pub fn parse(content: &[u8]) -> Option<BeginRequest> {
        let body: &[u8; 8] = content.try_into().ok()?;
        Some(BeginRequest {
            role: u16::from_be_bytes([body[0], body[1]]),
            flags: body[2],
        })
    }

    pub fn keep_conn(&self) -> bool {
        self.flags & FLAG_KEEP_CONN != 0
    }
}

/// Append one record, padded to a multiple of 8. `content` must fit one record.
pub fn write_record(out: &mut Vec<u8>, record_type: u8, request_id: u16, content: &[u8]) {
    debug_assert!(content.len() <= MAX_CONTENT);
    let len = content.len().min(MAX_CONTENT);
    let padding = (8 - len % 8) % 8;
    let id = request_id.to_be_bytes();
    let clen = (len as u16).to_be_bytes();
    out.extend_from_slice(&[
        VERSION_1,
        record_type,
        id[0],
        id[1],
        clen[0],
        clen[1],
        padding as u8,
        0,
    ]);
    out.extend_from_slice(&content[..len]);
    out.extend_from_slice(&[0u8; 8][..padding]);
}

/// Append `data` as a stream of records of `record_type` (STDOUT, PARAMS, ...), split at
/// a multiple of 8 so no record needs padding but the last; then the empty record that
/// closes the stream.
pub fn write_stream(out: &mut Vec<u8>, record_type: u8, request_id: u16, data: &[u8]) {
    const CHUNK: usize = MAX_CONTENT - MAX_CONTENT % 8;
    out.reserve(data.len() + (data.len() / CHUNK + 2) * (HEADER_LEN + 8));
    for chunk in data.chunks(CHUNK) {
        write_record(out, record_type, request_id, chunk);
    }
    write_record(out, record_type, request_id, &[]);
}

/// Append END_REQUEST.
pub fn write_end_request(out: &mut Vec<u8>, request_id: u16, app_status: u32, protocol_status: u8) {
    let s = app_status.to_be_bytes();
    write_record(
        out,
        END_REQUEST,
        request_id,
        &[s[0], s[1], s[2], s[3], protocol_status, 0, 0, 0],
    );
}

/// Append UNKNOWN_TYPE for a management record type we do not know.
pub fn write_unknown_type(out: &mut Vec<u8>, record_type: u8) {
    write_record(out, UNKNOWN_TYPE, 0, &[record_type, 0, 0, 0, 0, 0, 0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_table() {
        // (bytes, expected: None = need more, Some((type, id, content, used)))
        type Row = (
            Vec<u8>,
            Result<Option<(u8, u16, Vec<u8>, usize)>, DecodeError>,
        );
        let rows: Vec<Row> = vec![
            (vec![], Ok(None)),
            (vec![1, 5, 0, 1, 0, 0, 0], Ok(None)),
            (vec![1, 5, 0, 1, 0, 0, 0, 0], Ok(Some((5, 1, vec![], 8)))),
            (vec![1, 5, 0, 1, 0, 2, 0, 0, b'a'], Ok(None)),
            (
                vec![1, 5, 0, 1, 0, 2, 6, 0, b'a', b'b', 0, 0, 0, 0, 0],
                Ok(None),
            ),
            (
                vec![1, 5, 0, 1, 0, 2, 6, 0, b'a', b'b', 0, 0, 0, 0, 0, 0, 9],
                Ok(Some((5, 1, b"ab".to_vec(), 16))),
            ),
            (
                vec![1, 4, 0xff, 0xfe, 0, 0, 0, 0],
                Ok(Some((4, 0xfffe, vec![], 8))),
            ),
            (vec![2, 5, 0, 1, 0, 0, 0, 0], Err(DecodeError::Version(2))),
            (vec![0, 5, 0, 1, 0, 0, 0, 0], Err(DecodeError::Version(0))),
        ];
        for (bytes, expected) in rows {
            let got = decode(&bytes)
                .map(|o| o.map(|(r, n)| (r.record_type, r.request_id, r.content.to_vec(), n)));
            assert_eq!(got, expected, "{bytes:?}");
        }
    }

    #[test]
    fn write_then_decode_all_lengths_around_padding() {
        for len in [0usize, 1, 7, 8, 9, 15, 16, 65528, 65529, 65535] {
            let content = vec![0xabu8; len];
            let mut out = Vec::new();
            write_record(&mut out, STDOUT, 7, &content);
            assert_eq!(out.len() % 8, 0, "len {len}");
            let (rec, used) = decode(&out).unwrap().unwrap();
            assert_eq!(
                (rec.record_type, rec.request_id, rec.content.len(), used),
                (STDOUT, 7, len, out.len())
            );
        }
    }

    #[test]
    fn stream_splits_and_terminates() {
        let data = vec![7u8; 200_000];
        let mut out = Vec::new();
        write_stream(&mut out, STDOUT, 1, &data);
        let mut pos = 0;
        let mut got = Vec::new();
        let mut records = 0;
        while let Some((rec, used)) = decode(&out[pos..]).unwrap() {
            pos += used;
            records += 1;
            if rec.content.is_empty() {
                break;
            }
            got.extend_from_slice(rec.content);
        }
        assert_eq!(pos, out.len());
        assert_eq!(got, data);
        assert_eq!(records, 5); // 4 data records (65528 * 3 + 3416) and the terminator
    }

    #[test]
    fn begin_request_lengths() {
        for len in [0usize, 1, 7, 9, 16] {
            assert_eq!(BeginRequest::parse(&vec![0u8; len]), None, "len {len}");
        }
        let b = BeginRequest::parse(&[0, 1, 1, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!((b.role, b.keep_conn()), (ROLE_RESPONDER, true));
    }
}
