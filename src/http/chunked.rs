// TEMPORARY STUB (lead): replaced by the real decoder.
#[derive(Debug)]
pub struct ChunkedError;
impl std::fmt::Display for ChunkedError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "bad") } }
pub enum Step { Data { start: usize, end: usize }, NeedMore, Done { consumed: usize } }
pub struct ChunkedDecoder;
impl ChunkedDecoder { pub fn new() -> Self { Self } pub fn decode(&mut self, _i: &[u8]) -> Result<(usize, Step), ChunkedError> { Err(ChunkedError) } }
