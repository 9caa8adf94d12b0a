//! Incremental, strict decoder for chunked request bodies (RFC 9112 §7.1).
//!
//! The decoder never buffers and never looks ahead: every byte it is shown is either
//! taken into its state or reported back as payload. So a caller can forward exactly
//! the bytes each call consumed, verbatim, and stop at the byte where the message ends;
//! whatever follows (a pipelined request) stays untouched. It is strict for the same
//! reason the head parser is: a body two parties frame differently is request smuggling.

use std::fmt;

/// Longest chunk-size line (size and extensions, without CRLF).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of trailer fields (with their CRLFs, without the final empty line).
pub const MAX_TRAILER_BYTES: usize = 8192;
/// The largest chunk size taken at all: a body length must fit a signed 64-bit offset
/// (as Content-Length must for most peers), so `ffffffffffffffff` is malformed, not big.
pub const MAX_CHUNK_SIZE: u64 = i64::MAX as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    /// Not a hex digit where the chunk size is expected (or right after it).
    InvalidChunkSize,
    ChunkSizeOverflow,
    InvalidChunkExtension,
    ChunkLineTooLong,
    /// A line ended in LF without CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// Chunk data not followed by CRLF.
    MissingDataCrlf,
    InvalidTrailerName,
    /// A trailer line starting with whitespace (obsolete line folding).
    TrailerObsFold,
    /// NUL or another control character in a trailer value.
    InvalidTrailerValue,
    TrailersTooLarge,
    /// The chunk sizes announced so far add up to more than the decoder's limit (the
    /// whole body is refused as soon as its size line says so, before any data).
    TooLarge,
}

impl ChunkedError {
    /// Every malformed body is the client's fault; one over the limit is 413.
    pub fn status(&self) -> u16 {
        match self {
            ChunkedError::TooLarge => 413,
            _ => 400,
        }
    }
}

impl fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkedError::InvalidChunkSize => "invalid chunk size",
            ChunkedError::ChunkSizeOverflow => "chunk size too large",
            ChunkedError::InvalidChunkExtension => "invalid chunk extension",
            ChunkedError::ChunkLineTooLong => "chunk-size line too long",
            ChunkedError::BareLf => "line ending without CR",
            ChunkedError::BareCr => "CR not followed by LF",
            ChunkedError::MissingDataCrlf => "chunk data not followed by CRLF",
            ChunkedError::InvalidTrailerName => "invalid trailer field",
            ChunkedError::TrailerObsFold => "trailer line starts with whitespace",
            ChunkedError::InvalidTrailerValue => "control character in trailer value",
            ChunkedError::TrailersTooLarge => "trailer section too large",
            ChunkedError::TooLarge => "chunked body over the size limit",
        })
    }
}

impl std::error::Error for ChunkedError {}

/// What the bytes consumed by one [`ChunkedDecoder::decode`] call held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Payload at `input[start..end]`; `end` is also the count consumed.
    Data { start: usize, end: usize },
    /// All of the input was framing; more is needed.
    NeedMore,
    /// The message ended: its last byte (the final CRLF, after any trailers) is
    /// `input[consumed - 1]`, and nothing after it was consumed.
    Done { consumed: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Start of a chunk-size line: a hex digit must come.
    SizeStart,
    Size,
    /// BWS after the size: only `;` may follow.
    SizeSpace,
    /// After `;`, before the extension name.
    ExtNameStart,
    ExtName,
    /// BWS after a name: `=` or `;` may follow.
    ExtNameSpace,
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    /// After a closing quote.
    ExtQuotedEnd,
    /// BWS after a value: only `;` may follow.
    ExtValueSpace,
    /// CR of the chunk-size line seen.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// The chunk size being read, then the payload bytes left of the chunk.
    size: u64,
    line_len: usize,
    trailer_len: usize,
    /// Most payload bytes the whole body may have.
    limit: u64,
    /// Payload bytes announced by the chunk sizes read so far.
    announced: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder for a body of any size (up to [`MAX_CHUNK_SIZE`] a chunk).
    pub fn new() -> Self {
        Self::with_limit(u64::MAX)
    }

    /// A decoder that fails with [`ChunkedError::TooLarge`] at the first chunk-size
    /// digit that takes the body past `limit` payload bytes: a client announcing a
    /// huge chunk is answered at once, not after it sent (or stalled on) the data.
    pub fn with_limit(limit: u64) -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            size: 0,
            line_len: 0,
            trailer_len: 0,
            limit,
            announced: 0,
        }
    }

    /// A chunk size as its digits arrive: too large to be a size (400), or taking
    /// the body past the limit (413).
    fn check_size(&self) -> Result<(), ChunkedError> {
        if self.size > MAX_CHUNK_SIZE {
            return Err(ChunkedError::ChunkSizeOverflow);
        }
        if self.size > self.limit.saturating_sub(self.announced) {
            return Err(ChunkedError::TooLarge);
        }
        Ok(())
    }

    /// Decode from `input` (bytes not yet consumed). Returns how many input bytes were
    /// consumed and what they were. Only `Data` stops short of the end of the input
    /// (it returns one stretch of payload per call) and `Done` (the rest is not part of
    /// this message); after `Done`, every call returns `(0, Done { consumed: 0 })`.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Step), ChunkedError> {
        if self.state == State::Done {
            return Ok((0, Step::Done { consumed: 0 }));
        }
        let mut pos = 0;
        while pos < input.len() {
            if self.state == State::Data {
                let available = (input.len() - pos) as u64;
                let n = self.size.min(available) as usize;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                let end = pos + n;
                return Ok((end, Step::Data { start: pos, end }));
            }
            self.byte(input[pos])?;
            pos += 1;
            if self.state == State::Done {
                return Ok((pos, Step::Done { consumed: pos }));
            }
        }
        Ok((pos, Step::NeedMore))
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Advance over one byte of framing.
    fn byte(&mut self, b: u8) -> Result<(), ChunkedError> {
        use ChunkedError as E;
        use State as S;
        let in_size_line = matches!(
            self.state,
            S::SizeStart
                | S::Size
                | S::SizeSpace
                | S::ExtNameStart
                | S::ExtName
                | S::ExtNameSpace
                | S::ExtValueStart
                | S::ExtToken
                | S::ExtQuoted
                | S::ExtQuotedEscape
                | S::ExtQuotedEnd
                | S::ExtValueSpace
        );
        if in_size_line && b != b'\r' {
            self.line_len += 1;
            if self.line_len > MAX_CHUNK_LINE {
                return Err(E::ChunkLineTooLong);
            }
        }
        if matches!(self.state, S::TrailerName | S::TrailerValue | S::TrailerLf)
            || (self.state == S::TrailerStart && b != b'\r')
        {
            self.trailer_len += 1;
            if self.trailer_len > MAX_TRAILER_BYTES {
                return Err(E::TrailersTooLarge);
            }
        }
        let is_ws = b == b' ' || b == b'\t';
        // Each state ends in an unguarded arm, so the compiler checks that every byte in
        // every state is decided. RFC 9112 §7.1.1 allows BWS around ';' and '=' in
        // extensions, and nowhere else on the line.
        self.state = match (self.state, b) {
            (S::SizeStart, _) => {
                self.size = u64::from(hex_value(b).ok_or(E::InvalidChunkSize)?);
                self.check_size()?;
                S::Size
            }
            (S::Size, _) if hex_value(b).is_some() => {
                let digit = u64::from(hex_value(b).unwrap_or_default());
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(E::ChunkSizeOverflow)?;
                self.check_size()?;
                S::Size
            }
            (S::Size | S::ExtName | S::ExtToken | S::ExtQuotedEnd, b'\r') => S::SizeLf,
            (
                S::Size
                | S::SizeSpace
                | S::ExtName
                | S::ExtNameSpace
                | S::ExtToken
                | S::ExtQuotedEnd
                | S::ExtValueSpace,
                b';',
            ) => S::ExtNameStart,
            (_, b'\n') if in_size_line => return Err(E::BareLf),
            (S::Size | S::SizeSpace, _) if is_ws => S::SizeSpace,
            (S::Size | S::SizeSpace, _) => return Err(E::InvalidChunkSize),
            (S::ExtNameStart, _) if is_ws => S::ExtNameStart,
            (S::ExtNameStart | S::ExtName, _) if is_tchar(b) => S::ExtName,
            (S::ExtName | S::ExtNameSpace, _) if is_ws => S::ExtNameSpace,
            (S::ExtName | S::ExtNameSpace, b'=') => S::ExtValueStart,
            (S::ExtValueStart, _) if is_ws => S::ExtValueStart,
            (S::ExtValueStart, b'"') => S::ExtQuoted,
            (S::ExtValueStart | S::ExtToken, _) if is_tchar(b) => S::ExtToken,
            (S::ExtToken | S::ExtQuotedEnd | S::ExtValueSpace, _) if is_ws => S::ExtValueSpace,
            (S::ExtQuoted, b'"') => S::ExtQuotedEnd,
            (S::ExtQuoted, b'\\') => S::ExtQuotedEscape,
            (S::ExtQuoted, _) if is_qdtext(b) => S::ExtQuoted,
            (S::ExtQuotedEscape, _) if is_ws || is_vchar_or_obs(b) => S::ExtQuoted,
            (
                S::ExtNameStart
                | S::ExtName
                | S::ExtNameSpace
                | S::ExtValueStart
                | S::ExtToken
                | S::ExtQuoted
                | S::ExtQuotedEscape
                | S::ExtQuotedEnd
                | S::ExtValueSpace,
                _,
            ) => return Err(E::InvalidChunkExtension),

            (S::SizeLf, b'\n') => {
                self.line_len = 0;
                self.announced += self.size;
                if self.size == 0 {
                    S::TrailerStart
                } else {
                    S::Data
                }
            }
            (S::SizeLf, _) => return Err(E::BareCr),
            // `decode` deals with these without calling here.
            (S::Data | S::Done, _) => self.state,
            (S::DataCr, b'\r') => S::DataLf,
            (S::DataCr, _) => return Err(E::MissingDataCrlf),
            (S::DataLf, b'\n') => S::SizeStart,
            (S::DataLf, _) => return Err(E::MissingDataCrlf),

            (S::TrailerStart, b'\r') => S::FinalLf,
            (S::TrailerStart | S::TrailerName | S::TrailerValue, b'\n') => return Err(E::BareLf),
            (S::TrailerStart, _) if is_ws => return Err(E::TrailerObsFold),
            (S::TrailerStart | S::TrailerName, _) if is_tchar(b) => S::TrailerName,
            (S::TrailerName, b':') => S::TrailerValue,
            (S::TrailerStart | S::TrailerName, _) => return Err(E::InvalidTrailerName),
            (S::TrailerValue, b'\r') => S::TrailerLf,
            (S::TrailerValue, _) if b == b'\t' || (b >= 0x20 && b != 0x7f) => S::TrailerValue,
            (S::TrailerValue, _) => return Err(E::InvalidTrailerValue),
            (S::TrailerLf, b'\n') => S::TrailerStart,
            (S::TrailerLf, _) => return Err(E::BareCr),
            (S::FinalLf, b'\n') => S::Done,
            (S::FinalLf, _) => return Err(E::BareCr),
        };
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_vchar_or_obs(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// RFC 9110 §5.6.4: inside a quoted-string, anything visible but '"' and '\'.
fn is_qdtext(b: u8) -> bool {
    b == b'\t' || b == b' ' || (is_vchar_or_obs(b) && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload, and the bytes of the message as relayed.
    type Decoded = (Vec<u8>, Vec<u8>);

    /// Feed `pieces` one after another, as a caller relaying the body would: forward
    /// what each call consumed, keep the payload. Returns (payload, bytes of the message)
    /// once done, or `Ok(None)` if the pieces ran out first.
    fn feed<'a>(
        pieces: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Option<Decoded>, ChunkedError> {
        let mut decoder = ChunkedDecoder::new();
        let mut payload = Vec::new();
        let mut relayed = Vec::new();
        for piece in pieces {
            let mut input = piece;
            loop {
                let (consumed, step) = decoder.decode(input)?;
                relayed.extend_from_slice(&input[..consumed]);
                match step {
                    Step::Data { start, end } => {
                        assert_eq!(end, consumed);
                        assert!(start < end, "empty data step");
                        payload.extend_from_slice(&input[start..end]);
                    }
                    Step::NeedMore => {
                        assert_eq!(consumed, input.len(), "NeedMore left bytes");
                        assert!(!decoder.is_done());
                        break;
                    }
                    Step::Done { consumed: end } => {
                        assert_eq!(end, consumed);
                        assert!(decoder.is_done());
                        assert_eq!(decoder.decode(b"more"), Ok((0, Step::Done { consumed: 0 })));
                        return Ok(Some((payload, relayed)));
                    }
                }
                input = &input[consumed..];
            }
        }
        Ok(None)
    }

    fn decode_all(body: &[u8]) -> Result<Option<Decoded>, ChunkedError> {
        feed([body])
    }

    fn payload(body: &str) -> Vec<u8> {
        match decode_all(body.as_bytes()) {
            Ok(Some((payload, relayed))) => {
                assert_eq!(relayed, body.as_bytes(), "{body:?}");
                payload
            }
            other => panic!("{body:?} gave {other:?}"),
        }
    }

    fn error(body: &str) -> ChunkedError {
        error_bytes(body.as_bytes())
    }

    fn error_bytes(body: &[u8]) -> ChunkedError {
        match decode_all(body) {
            Err(e) => {
                assert_eq!(e.status(), 400);
                assert!(!e.to_string().is_empty());
                e
            }
            other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(body)),
        }
    }

    const VALID: &[(&str, &str)] = &[
        ("0\r\n\r\n", ""),
        ("5\r\nhello\r\n0\r\n\r\n", "hello"),
        ("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
        ("A\r\n0123456789\r\n000\r\n\r\n", "0123456789"),
        ("a\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
        ("0000000000000000000000001\r\nx\r\n0\r\n\r\n", "x"),
        ("1;name\r\nx\r\n0\r\n\r\n", "x"),
        ("1 ; name = value ; other\r\nx\r\n0;last\r\n\r\n", "x"),
        ("1;a=\"q \\\" ; \\\\ \t\x7e\"\r\nx\r\n0\r\n\r\n", "x"),
        ("1;a=\"\"\r\nx\r\n0\r\n\r\n", "x"),
        ("1;a=b;c=\"d\" ;e\r\nx\r\n0\r\n\r\n", "x"),
        (
            "1\r\nx\r\n0\r\nExpires: never\r\nX-Empty:\r\nX-Sum:  a\tb \r\n\r\n",
            "x",
        ),
        ("3\r\n\r\n\r\r\n0\r\n\r\n", "\r\n\r"),
    ];

    #[test]
    fn valid_bodies() {
        for (body, expected) in VALID {
            assert_eq!(payload(body), expected.as_bytes(), "{body:?}");
        }
    }

    #[test]
    fn every_prefix_of_a_valid_body_needs_more() {
        for (body, _) in VALID {
            let body = body.as_bytes();
            for i in 0..body.len() {
                assert_eq!(decode_all(&body[..i]), Ok(None), "prefix {i} of {body:?}");
            }
        }
    }

    #[test]
    fn split_at_every_position() {
        for (body, expected) in VALID {
            let body = body.as_bytes();
            for i in 0..=body.len() {
                let (payload, relayed) = feed([&body[..i], &body[i..]]).unwrap().unwrap();
                assert_eq!(payload, expected.as_bytes(), "split {i} of {body:?}");
                assert_eq!(relayed, body);
            }
            for size in 1..=17 {
                let (payload, relayed) = feed(body.chunks(size)).unwrap().unwrap();
                assert_eq!(payload, expected.as_bytes(), "pieces of {size} of {body:?}");
                assert_eq!(relayed, body);
            }
        }
    }

    #[test]
    fn end_is_exact_with_pipelined_bytes_after() {
        let next = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for (body, expected) in VALID {
            let mut stream = body.as_bytes().to_vec();
            stream.extend_from_slice(next);
            let mut decoder = ChunkedDecoder::new();
            let mut at = 0;
            let mut data = Vec::new();
            loop {
                let (consumed, step) = decoder.decode(&stream[at..]).unwrap();
                if let Step::Data { start, end } = step {
                    data.extend_from_slice(&stream[at + start..at + end]);
                }
                at += consumed;
                match step {
                    Step::Done { .. } => break,
                    Step::NeedMore => panic!("{body:?}: needed more"),
                    Step::Data { .. } => {}
                }
            }
            assert_eq!(at, body.len(), "{body:?}");
            assert_eq!(&stream[at..], next);
            assert_eq!(data, expected.as_bytes());
        }
        // And from a single call that gets the whole last chunk line and trailers.
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(
            decoder.decode(b"0\r\nA: b\r\n\r\nGET"),
            Ok((11, Step::Done { consumed: 11 }))
        );
    }

    #[test]
    fn data_steps() {
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(decoder.decode(b""), Ok((0, Step::NeedMore)));
        assert_eq!(decoder.decode(b"4\r"), Ok((2, Step::NeedMore)));
        // The size line's end and the payload come back from one call.
        assert_eq!(
            decoder.decode(b"\nab"),
            Ok((3, Step::Data { start: 1, end: 3 }))
        );
        assert_eq!(decoder.decode(b""), Ok((0, Step::NeedMore)));
        assert_eq!(
            decoder.decode(b"cdef"),
            Ok((2, Step::Data { start: 0, end: 2 }))
        );
        assert_eq!(decoder.decode(b"ef"), Err(ChunkedError::MissingDataCrlf));
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(
            decoder.decode(b"7fffffffffffffff\r\nxy"),
            Ok((20, Step::Data { start: 18, end: 20 }))
        );
    }

    #[test]
    fn a_chunk_past_the_limit_is_refused_at_its_size() {
        // No data needs to follow: the size alone decides, digit by digit.
        for size in ["ffffffffffffffff", "100001", "7fffffffffffffff"] {
            let mut decoder = ChunkedDecoder::with_limit(0x10_0000);
            let e = decoder.decode(size.as_bytes()).unwrap_err();
            assert_eq!(e, ChunkedError::TooLarge, "{size}");
            assert_eq!(e.status(), 413);
        }
        // The limit counts the whole body, over all chunks.
        let mut decoder = ChunkedDecoder::with_limit(5);
        let mut input = &b"3\r\nabc\r\n"[..];
        while !input.is_empty() {
            let (used, _) = decoder.decode(input).unwrap();
            input = &input[used..];
        }
        assert_eq!(decoder.decode(b"3\r\n"), Err(ChunkedError::TooLarge));
        let mut decoder = ChunkedDecoder::with_limit(5);
        let body = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut input = &body[..];
        while !decoder.is_done() {
            let (used, _) = decoder.decode(input).unwrap();
            input = &input[used..];
        }
    }

    #[test]
    fn chunk_size_must_be_hex_digits() {
        use ChunkedError::*;
        for body in ["", " 5", "+5", "-5", "0x5", "g", ";a", "\t5", "5g", "5 5"] {
            let body = format!("{body}\r\nhello\r\n0\r\n\r\n");
            assert_eq!(error(&body), InvalidChunkSize, "{body:?}");
        }
        assert_eq!(error("5 \r\nhello\r\n0\r\n\r\n"), InvalidChunkSize);
        assert_eq!(error("10000000000000000\r\n"), ChunkSizeOverflow);
        assert_eq!(error("fffffffffffffffff\r\n"), ChunkSizeOverflow);
        // Past a signed 64-bit length: no body can be that long.
        assert_eq!(error("ffffffffffffffff\r\n"), ChunkSizeOverflow);
        assert_eq!(error("8000000000000000\r\n"), ChunkSizeOverflow);
    }

    #[test]
    fn chunk_extensions() {
        use ChunkedError::*;
        for ext in [
            ";",
            "; ",
            ";=v",
            ";a=",
            ";a= ",
            ";a=\"x",
            ";a=\"x\"y",
            ";a b",
            ";a=b c",
            ";a=b,c",
            ";a=\"\x01\"",
            ";a=\"\\\x01\"",
            ";a@b",
            ";a=\"x\" ",
            ";a ",
            ";a=b ",
        ] {
            let body = format!("1{ext}\r\nx\r\n0\r\n\r\n");
            assert_eq!(error(&body), InvalidChunkExtension, "{body:?}");
        }
        // Still an error before the line ends.
        assert_eq!(decode_all(b"1;a b"), Err(InvalidChunkExtension));
        let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_LINE - 2));
        assert_eq!(payload(&long), b"x");
        let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_LINE - 1));
        assert_eq!(error(&long), ChunkLineTooLong);
        let zeros = format!("{}1\r\nx\r\n0\r\n\r\n", "0".repeat(MAX_CHUNK_LINE));
        assert_eq!(error(&zeros), ChunkLineTooLong);
    }

    #[test]
    fn line_endings_must_be_crlf() {
        use ChunkedError::*;
        assert_eq!(error("5\nhello\r\n0\r\n\r\n"), BareLf);
        assert_eq!(error("5;a\nhello\r\n0\r\n\r\n"), BareLf);
        assert_eq!(error("5;a=\"b\"\nhello\r\n0\r\n\r\n"), BareLf);
        assert_eq!(error("5\rhello\r\n0\r\n\r\n"), BareCr);
        assert_eq!(error("0\r\n\n"), BareLf);
        assert_eq!(error("0\r\n\r\r\n"), BareCr);
        assert_eq!(error("0\r\nA: b\n\r\n"), BareLf);
        assert_eq!(error("0\r\nA: b\rc\r\n\r\n"), BareCr);
        assert_eq!(error("0\r\nA\n\r\n"), BareLf);
        assert_eq!(error("\n"), InvalidChunkSize);
    }

    #[test]
    fn data_must_be_followed_by_crlf() {
        use ChunkedError::*;
        assert_eq!(error("5\r\nhelloX\r\n0\r\n\r\n"), MissingDataCrlf);
        assert_eq!(error("5\r\nhello\n0\r\n\r\n"), MissingDataCrlf);
        assert_eq!(error("5\r\nhello\rX0\r\n\r\n"), MissingDataCrlf);
        assert_eq!(error("5\r\nhello world\r\n0\r\n\r\n"), MissingDataCrlf);
        // Too little data: the CRLF is taken as payload, the rest must be CRLF.
        assert_eq!(error("5\r\nhel\r\n0\r\n\r\n"), MissingDataCrlf);
    }

    #[test]
    fn trailers() {
        use ChunkedError::*;
        assert_eq!(error("0\r\nA: b\r\n c\r\n\r\n"), TrailerObsFold);
        assert_eq!(error("0\r\nA: b\r\n\tc\r\n\r\n"), TrailerObsFold);
        assert_eq!(error("0\r\n A: b\r\n\r\n"), TrailerObsFold);
        assert_eq!(error("0\r\nA: b\0\r\n\r\n"), InvalidTrailerValue);
        assert_eq!(error("0\r\nA: \x7f\r\n\r\n"), InvalidTrailerValue);
        assert_eq!(error("0\r\nA: \x01\r\n\r\n"), InvalidTrailerValue);
        assert_eq!(error("0\r\nA : b\r\n\r\n"), InvalidTrailerName);
        assert_eq!(error("0\r\n: b\r\n\r\n"), InvalidTrailerName);
        assert_eq!(error("0\r\nA\r\n\r\n"), InvalidTrailerName);
        assert_eq!(error("0\r\nA\0: b\r\n\r\n"), InvalidTrailerName);
        let body = |n: usize| format!("0\r\nX: {}\r\n\r\n", "v".repeat(n));
        let fits = MAX_TRAILER_BYTES - "X: \r\n".len();
        assert_eq!(payload(&body(fits)), b"");
        assert_eq!(error(&body(fits + 1)), TrailersTooLarge);
        // Obs-text is allowed in values, as in header values.
        assert_eq!(decode_all(b"0\r\nA: \xff\r\n\r\n").unwrap().unwrap().0, b"");
    }

    #[test]
    fn every_error_variant_has_a_message() {
        use ChunkedError::*;
        let all = [
            InvalidChunkSize,
            ChunkSizeOverflow,
            InvalidChunkExtension,
            ChunkLineTooLong,
            BareLf,
            BareCr,
            MissingDataCrlf,
            InvalidTrailerName,
            TrailerObsFold,
            InvalidTrailerValue,
            TrailersTooLarge,
            TooLarge,
        ];
        let messages: std::collections::HashSet<String> =
            all.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), all.len());
    }

    #[test]
    fn no_panic_on_mutated_input() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let interesting = b"\r\n ;=\"\\\t\0\x7f\xff0123456789abcdefABCDEFxX:";
        for _ in 0..20_000 {
            let (body, _) = VALID[next() as usize % VALID.len()];
            let mut input = body.as_bytes().to_vec();
            for _ in 0..1 + next() % 3 {
                let at = next() as usize % (input.len() + 1);
                let byte = if next() % 2 == 0 {
                    interesting[next() as usize % interesting.len()]
                } else {
                    next() as u8
                };
                match next() % 3 {
                    0 if at < input.len() => input[at] = byte,
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => input.insert(at, byte),
                }
            }
            let split = next() as usize % (input.len() + 1);
            let whole = decode_all(&input);
            let halves = feed([&input[..split], &input[split..]]);
            // However the bytes arrive, the outcome is the same.
            assert_eq!(whole, halves, "{input:?} split at {split}");
            if let Ok(Some((_, relayed))) = whole {
                assert_eq!(relayed, input[..relayed.len()]);
            }
        }
    }
}
