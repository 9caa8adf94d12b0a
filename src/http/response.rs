//! Parsing the response heads of upstream HTTP servers: the tenant's worker as seen by
//! the dispatcher (proxy hand-over), and a tenant's app as seen by its worker.

use super::head::BodyFraming;

/// How the body after a response head is delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    Framed(BodyFraming),
    /// Neither a length nor chunked: the body ends when the upstream closes.
    UntilClose,
}

#[derive(Debug)]
pub struct ResponseHead {
    /// Bytes of the buffer the head takes; the body starts there.
    pub len: usize,
    pub status: u16,
    pub body: ResponseBody,
    /// The upstream said `Connection: close`.
    pub close: bool,
}

/// Parse an upstream's response head at the start of `buf`. Strict: anything odd is
/// the upstream's fault, `Err(502)`. `Ok(None)`: not complete yet.
pub fn parse_response_head(
    buf: &[u8],
    request_was_head: bool,
) -> Result<Option<ResponseHead>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(502),
    };
    let status = response.code.ok_or(502u16)?;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).map_err(|_| 502u16)?.trim();
            let n: u64 = value.parse().map_err(|_| 502u16)?;
            if length.is_some_and(|l| l != n) {
                return Err(502);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let no_body =
        request_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    let body = match (no_body, chunked, length) {
        (true, _, _) => ResponseBody::Framed(BodyFraming::None),
        (false, true, Some(_)) => return Err(502),
        (false, true, None) => ResponseBody::Framed(BodyFraming::Chunked),
        (false, false, Some(n)) => ResponseBody::Framed(BodyFraming::Length(n)),
        (false, false, None) => ResponseBody::UntilClose,
    };
    Ok(Some(ResponseHead {
        len,
        status,
        body,
        close,
    }))
}

/// Header fields as (name, value) pairs.
pub type Fields = Vec<(String, Vec<u8>)>;

/// The reason phrase and the headers of a complete response head (as checked by
/// [`parse_response_head`]), for a caller that rewrites the head instead of relaying it.
pub fn response_fields(head: &[u8]) -> Option<(String, Fields)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let reason = response.reason.unwrap_or("").to_string();
    let fields = response
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    Some((reason, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_framing() {
        let r = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, ResponseBody::Framed(BodyFraming::Length(5)));
        assert_eq!(r.len, 38);
        let r = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, ResponseBody::Framed(BodyFraming::None));
        let r = parse_response_head(
            b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(r.close && r.body == ResponseBody::Framed(BodyFraming::None));
        assert!(
            parse_response_head(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Le", false)
                .unwrap()
                .is_none()
        );
        let r = parse_response_head(b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, ResponseBody::UntilClose);
        let (reason, fields) = response_fields(b"HTTP/1.1 201 Made\r\nX: y\r\n\r\n").unwrap();
        assert_eq!(reason, "Made");
        assert_eq!(fields, vec![("X".to_string(), b"y".to_vec())]);
    }
}
