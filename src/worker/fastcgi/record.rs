//! FastCGI records (FastCGI 1.0 specification, §3 and §5): just what a web server
//! needs to talk to a Responder — encoding BEGIN_REQUEST, PARAMS and STDIN, decoding
//! STDOUT, STDERR and END_REQUEST.
//!
//! The decoder is strict because the app is the tenant's code: anything but version
//! 1 is an error, and a record is only copied out once all of its bytes (content and
//! padding) are buffered, so a length field never makes us allocate ahead of data.

use std::fmt;

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 8;
/// Content of one record is at most this long (a 16-bit length).
pub const MAX_CONTENT: usize = 0xffff;

pub const BEGIN_REQUEST: u8 = 1;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;

pub const ROLE_RESPONDER: u16 = 1;
const FLAG_KEEP_CONN: u8 = 1;

/// FCGI_END_REQUEST protocol status: the request is complete.
pub const REQUEST_COMPLETE: u8 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: u8,
    pub request_id: u16,
    pub content: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRequest {
    pub app_status: u32,
    pub protocol_status: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    Version(u8),
    BadEndRequest(usize),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Version(v) => write!(f, "FastCGI record of version {v}, not 1"),
            RecordError::BadEndRequest(n) => {
                write!(f, "FCGI_END_REQUEST with {n} content bytes, not 8")
            }
        }
    }
}

impl std::error::Error for RecordError {}

fn header(out: &mut Vec<u8>, kind: u8, request_id: u16, content_len: usize) {
    debug_assert!(content_len <= MAX_CONTENT);
    // Pad to a multiple of 8, as the specification recommends.
    let padding = (8 - content_len % 8) % 8;
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(&(content_len as u16).to_be_bytes());
    out.push(padding as u8);
    out.push(0);
}

fn record(out: &mut Vec<u8>, kind: u8, request_id: u16, content: &[u8]) {
    header(out, kind, request_id, content.len());
    out.extend_from_slice(content);
    let padding = (8 - content.len() % 8) % 8;
    out.extend_from_slice(&[0u8; 8][..padding]);
}

/// FCGI_BEGIN_REQUEST for the Responder role.
pub fn begin_request(out: &mut Vec<u8>, request_id: u16, keep_conn: bool) {
    let mut body = [0u8; 8];
    body[..2].copy_from_slice(&ROLE_RESPONDER.to_be_bytes());
    body[2] = if keep_conn { FLAG_KEEP_CONN } else { 0 };
    record(out, BEGIN_REQUEST, request_id, &body);
}

/// `data` as records of stream type `kind`, split at the record size limit. Empty
/// `data` gives the one empty record that ends the stream.
pub fn stream(out: &mut Vec<u8>, kind: u8, request_id: u16, data: &[u8]) {
    if data.is_empty() {
        record(out, kind, request_id, &[]);
        return;
    }
    for chunk in data.chunks(MAX_CONTENT) {
        record(out, kind, request_id, chunk);
    }
}

fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        out.extend_from_slice(&((len as u32) | 0x8000_0000).to_be_bytes());
    }
}

/// Name-value pairs (§3.4), the content of the PARAMS stream.
pub fn encode_params<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in pairs {
        let (name, value) = (name.as_ref(), value.as_ref());
        push_length(&mut out, name.len());
        push_length(&mut out, value.len());
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    }
    out
}

/// One record from the front of `input`: `Ok(None)` when more bytes are needed,
/// else the record and the bytes it took (header, content and padding).
pub fn decode(input: &[u8]) -> Result<Option<(Record, usize)>, RecordError> {
    if input.is_empty() {
        return Ok(None);
    }
    if input[0] != VERSION {
        return Err(RecordError::Version(input[0]));
    }
    if input.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = input[1];
    let request_id = u16::from_be_bytes([input[2], input[3]]);
    let content_len = u16::from_be_bytes([input[4], input[5]]) as usize;
    let padding = input[6] as usize;
    let total = HEADER_LEN + content_len + padding;
    if input.len() < total {
        return Ok(None);
    }
    if kind == END_REQUEST && content_len != 8 {
        return Err(RecordError::BadEndRequest(content_len));
    }
    let content = input[HEADER_LEN..HEADER_LEN + content_len].to_vec();
    Ok(Some((
        Record {
            kind,
            request_id,
            content,
        },
        total,
    )))
}

impl Record {
    /// The body of an FCGI_END_REQUEST record (its length is checked by [`decode`]).
    pub fn end_request(&self) -> Option<EndRequest> {
        (self.kind == END_REQUEST && self.content.len() == 8).then(|| EndRequest {
            app_status: u32::from_be_bytes(self.content[..4].try_into().expect("4 bytes")),
            protocol_status: self.content[4],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A web server never reads name-value pairs; this inverse of [`encode_params`]
    /// is here to check the encoding.
    #[derive(Debug, PartialEq)]
    struct BadNameValue;

    fn read_length(input: &[u8], at: &mut usize) -> Result<usize, BadNameValue> {
        let first = *input.get(*at).ok_or(BadNameValue)?;
        if first < 0x80 {
            *at += 1;
            return Ok(first as usize);
        }
        let bytes: [u8; 4] = input
            .get(*at..*at + 4)
            .ok_or(BadNameValue)?
            .try_into()
            .expect("four bytes");
        *at += 4;
        Ok((u32::from_be_bytes(bytes) & 0x7fff_ffff) as usize)
    }

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn decode_params(input: &[u8]) -> Result<Pairs, BadNameValue> {
        let mut pairs = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let name_len = read_length(input, &mut at)?;
            let value_len = read_length(input, &mut at)?;
            // Checked against what is there before anything is copied.
            let end = at
                .checked_add(name_len)
                .and_then(|n| n.checked_add(value_len))
                .filter(|&e| e <= input.len())
                .ok_or(BadNameValue)?;
            pairs.push((
                input[at..at + name_len].to_vec(),
                input[at + name_len..end].to_vec(),
            ));
            at = end;
        }
        Ok(pairs)
    }

    fn decode_all(mut input: &[u8]) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some((r, used)) = decode(input).unwrap() {
            out.push(r);
            input = &input[used..];
        }
        assert!(input.is_empty(), "trailing bytes");
        out
    }

    fn end_request(id: u16, app_status: u32) -> Vec<u8> {
        let mut body = app_status.to_be_bytes().to_vec();
        body.extend_from_slice(&[REQUEST_COMPLETE, 0, 0, 0]);
        let mut out = Vec::new();
        record(&mut out, END_REQUEST, id, &body);
        out
    }

    #[test]
    fn begin_request_layout() {
        let mut out = Vec::new();
        begin_request(&mut out, 1, false);
        assert_eq!(out, [1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        out.clear();
        begin_request(&mut out, 0x0102, true);
        assert_eq!(&out[..4], &[1, 1, 1, 2]);
        assert_eq!(out[10], 1, "keep_conn flag");
    }

    #[test]
    fn params_round_trip_with_short_and_long_lengths() {
        let long_value = vec![b'v'; 300];
        let long_name = vec![b'N'; 128];
        let pairs: Pairs = vec![
            (b"SCRIPT_FILENAME".to_vec(), b"/srv/www/index.php".to_vec()),
            (b"EMPTY".to_vec(), Vec::new()),
            (b"LONG".to_vec(), long_value.clone()),
            (long_name.clone(), b"x".to_vec()),
            (vec![b'a'; 127], vec![b'b'; 127]),
        ];
        let encoded = encode_params(&pairs);
        // 1-byte lengths below 128, 4-byte lengths with the high bit from 128 on.
        assert_eq!(&encoded[..2], &[15, 18]);
        assert_eq!(decode_params(&encoded).unwrap(), pairs);
        let at = encoded.windows(4).position(|w| w == b"LONG").unwrap();
        assert_eq!(&encoded[at - 5..at], &[4, 0x80, 0, 1, 44]);
    }

    #[test]
    fn params_with_lengths_past_the_end_are_rejected() {
        assert_eq!(decode_params(&[5, 0, b'a']), Err(BadNameValue));
        assert_eq!(
            decode_params(&[0xff, 0xff, 0xff, 0xff, 0]),
            Err(BadNameValue)
        );
        assert_eq!(decode_params(&[0x80, 0]), Err(BadNameValue));
    }

    #[test]
    fn stream_records_round_trip_and_split_at_the_size_limit() {
        let data: Vec<u8> = (0..150_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        stream(&mut out, STDOUT, 7, &data);
        stream(&mut out, STDOUT, 7, &[]);
        let records = decode_all(&out);
        assert_eq!(records.len(), 4);
        assert!(
            records
                .iter()
                .all(|r| r.kind == STDOUT && r.request_id == 7)
        );
        assert_eq!(records[0].content.len(), MAX_CONTENT);
        assert!(records[3].content.is_empty());
        let joined: Vec<u8> = records.iter().flat_map(|r| r.content.clone()).collect();
        assert_eq!(joined, data);
        // Every record is padded to a multiple of 8.
        assert_eq!(out.len() % 8, 0);
    }

    #[test]
    fn end_request_is_decoded_and_checked() {
        let bytes = end_request(1, 3);
        let (r, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            r.end_request(),
            Some(EndRequest {
                app_status: 3,
                protocol_status: REQUEST_COMPLETE
            })
        );
        let mut short = Vec::new();
        record(&mut short, END_REQUEST, 1, &[0; 4]);
        assert_eq!(decode(&short), Err(RecordError::BadEndRequest(4)));
    }

    #[test]
    fn other_versions_are_errors() {
        assert_eq!(decode(&[2]), Err(RecordError::Version(2)));
        assert_eq!(
            decode(&[0, 6, 0, 1, 0, 0, 0, 0]),
            Err(RecordError::Version(0))
        );
    }

    #[test]
    fn padding_from_the_app_is_skipped_whatever_its_length() {
        // Content 3 bytes, padding 255: all of it consumed, none of it content.
        let mut bytes = vec![1, STDOUT, 0, 1, 0, 3, 255, 0, b'a', b'b', b'c'];
        bytes.extend_from_slice(&[0xee; 255]);
        assert_eq!(decode(&bytes[..bytes.len() - 1]).unwrap(), None);
        let (r, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!((r.content.as_slice(), used), (&b"abc"[..], bytes.len()));
    }

    fn sample_response() -> Vec<u8> {
        let mut out = Vec::new();
        stream(&mut out, STDERR, 1, b"PHP Notice: x");
        stream(
            &mut out,
            STDOUT,
            1,
            b"Content-Type: text/plain\r\n\r\nhello",
        );
        stream(&mut out, STDOUT, 1, &[b'z'; 70_000]);
        stream(&mut out, STDOUT, 1, &[]);
        stream(&mut out, STDERR, 1, &[]);
        out.extend_from_slice(&end_request(1, 0));
        out
    }

    #[test]
    fn every_prefix_of_a_valid_stream_decodes_without_error() {
        let bytes = sample_response();
        let complete = decode_all(&bytes);
        let mut at = 0;
        let mut seen = 0;
        for cut in 0..=bytes.len() {
            // Decode what a reader holding `bytes[..cut]` can: never an error.
            loop {
                match decode(&bytes[at..cut]) {
                    Ok(Some((r, used))) => {
                        assert_eq!(r, complete[seen]);
                        seen += 1;
                        at += used;
                    }
                    Ok(None) => break,
                    Err(e) => panic!("prefix of {cut} bytes: {e}"),
                }
            }
        }
        assert_eq!(seen, complete.len());
    }

    #[test]
    fn split_reads_give_the_same_records() {
        let bytes = sample_response();
        let expected = decode_all(&bytes);
        for step in [1, 3, 7, 8, 9, 100, 4096] {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            for piece in bytes.chunks(step) {
                buf.extend_from_slice(piece);
                while let Some((r, used)) = decode(&buf).unwrap() {
                    got.push(r);
                    buf.drain(..used);
                }
            }
            assert!(buf.is_empty());
            assert_eq!(got, expected, "read size {step}");
        }
    }
}
