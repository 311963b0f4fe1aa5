//! FastCGI name-value pairs (spec §3.4): lengths of 1 byte (< 128) or 4 bytes (high bit
//! set), then the name and value bytes.

/// A pair stream that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamsError {
    /// The stream ends inside a length or a name/value.
    Truncated,
}

impl std::fmt::Display for ParamsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamsError::Truncated => {
                f.write_str("name-value pair runs past the end of the params")
            }
        }
    }
}

/// Iterate over the pairs of a complete params stream (all PARAMS records joined, so a
/// pair or a length split across records is whole here).
pub fn pairs(buf: &[u8]) -> Pairs<'_> {
    Pairs { rest: buf }
}

/// Iterator returned by [`pairs`]; yields an error once, then stops.
pub struct Pairs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), ParamsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = self.decode_one();
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

impl<'a> Pairs<'a> {
    fn decode_one(&mut self) -> Result<(&'a [u8], &'a [u8]), ParamsError> {
        let name_len = self.length()?;
        let value_len = self.length()?;
        let name = self.take(name_len)?;
        let value = self.take(value_len)?;
        Ok((name, value))
    }

    fn length(&mut self) -> Result<usize, ParamsError> {
        let (&first, rest) = self.rest.split_first().ok_or(ParamsError::Truncated)?;
        if first < 0x80 {
            self.rest = rest;
            return Ok(usize::from(first));
        }
        let bytes = self.rest.first_chunk::<4>().ok_or(ParamsError::Truncated)?;
        let len = u32::from_be_bytes(*bytes) & 0x7fff_ffff;
        self.rest = &self.rest[4..];
        usize::try_from(len).map_err(|_| ParamsError::Truncated)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ParamsError> {
        if len > self.rest.len() {
            return Err(ParamsError::Truncated);
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }
}

/// Append one pair with the shortest length encodings.
pub fn write_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for len in [name.len(), value.len()] {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&((len as u32) | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pair = (Vec<u8>, Vec<u8>);
    type Row = (Vec<u8>, Result<Vec<Pair>, ParamsError>);

    fn all(buf: &[u8]) -> Result<Vec<Pair>, ParamsError> {
        pairs(buf)
            .map(|r| r.map(|(n, v)| (n.to_vec(), v.to_vec())))
            .collect()
    }

    #[test]
    fn decode_table() {
        let long = vec![b'v'; 200];
        let mut four = vec![0x04, 0x80, 0x00, 0x00, 0xc8];
        four.extend_from_slice(b"NAME");
        four.extend_from_slice(&long);
        let rows: Vec<Row> = vec![
            (vec![], Ok(vec![])),
            (
                b"\x01\x02AVV".to_vec(),
                Ok(vec![(b"A".to_vec(), b"VV".to_vec())]),
            ),
            (b"\x00\x00".to_vec(), Ok(vec![(vec![], vec![])])),
            (four, Ok(vec![(b"NAME".to_vec(), long.clone())])),
            (b"\x01".to_vec(), Err(ParamsError::Truncated)),
            (b"\x01\x02AV".to_vec(), Err(ParamsError::Truncated)),
            (vec![0x80, 0, 0], Err(ParamsError::Truncated)),
            (vec![0xff, 0xff, 0xff, 0xff, 0], Err(ParamsError::Truncated)),
            (
                vec![0x01, 0x7f, 0xff, 0xff, 0xff, b'A'],
                Err(ParamsError::Truncated),
            ),
        ];
        for (buf, expected) in rows {
            assert_eq!(all(&buf), expected, "{buf:?}");
        }
    }

    #[test]
    fn write_then_read_round_trip() {
        let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"QUERY_STRING".to_vec(), vec![b'q'; 127]),
            (b"X".to_vec(), vec![b'q'; 128]),
            (vec![b'N'; 300], vec![]),
        ];
        let mut buf = Vec::new();
        for (n, v) in &cases {
            write_pair(&mut buf, n, v);
        }
        assert_eq!(all(&buf).unwrap(), cases);
    }
}
