// TEMPORARY STUB (lead): replaced by the real parser.
#[derive(Debug)]
pub struct Limits { pub max_request_line: usize, pub max_head_bytes: usize, pub max_headers: usize }
#[derive(Debug)]
pub enum HeadError { Bad }
impl HeadError { pub fn status(&self) -> u16 { 400 } }
impl std::fmt::Display for HeadError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "bad") } }
#[derive(Debug, Clone, PartialEq)]
pub enum Method { Get, Head, Post, Put, Delete, Options, Patch, Connect, Trace, Other(String) }
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Version { Http10, Http11 }
#[derive(Debug, Clone, PartialEq)]
pub enum BodyFraming { None, Length(u64), Chunked }
#[derive(Debug)]
pub struct RequestHead { pub head_len: usize, pub method: Method, pub version: Version, pub target: String, pub path: String, pub query: Option<String>, pub host: Option<String>, pub headers: Vec<(String, Vec<u8>)>, pub body: BodyFraming, pub keep_alive: bool, pub expect_continue: bool }
impl RequestHead { pub fn header(&self, _n: &str) -> Option<&[u8]> { None } pub fn is_head(&self) -> bool { false } }
pub fn parse_request(_buf: &[u8], _l: &Limits) -> Result<Option<RequestHead>, HeadError> { Err(HeadError::Bad) }
impl Method { pub fn as_str(&self) -> &str { "GET" } }
