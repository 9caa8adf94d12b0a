// TEMPORARY STUB (lead): replaced by the real module.
pub struct SiteFiles { pub root: std::os::fd::OwnedFd, pub index: Vec<String>, pub autoindex: bool }
pub trait RequestHeaders { fn header(&self, name: &str) -> Option<&[u8]>; }
pub enum Method { Get, Head, Other }
pub struct Part { pub head: Vec<u8>, pub offset: u64, pub len: u64 }
pub struct Response { pub status: u16, pub headers: Vec<(&'static str, String)>, pub body: Body }
impl Response { pub fn content_length(&self) -> u64 { 0 } }
pub enum Body { Empty, Bytes(Vec<u8>), File { file: std::fs::File, offset: u64, len: u64 }, Multipart { file: std::fs::File, parts: Vec<Part>, trailer: Vec<u8> } }
pub fn serve(_s: &SiteFiles, _m: Method, _p: &str, _q: Option<&str>, _h: &dyn RequestHeaders) -> Response { error_response(500) }
pub fn error_response(status: u16) -> Response { Response { status, headers: vec![], body: Body::Empty } }
