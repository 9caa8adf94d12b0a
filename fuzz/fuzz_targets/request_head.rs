#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| condo::fuzzing::request_head(data));
