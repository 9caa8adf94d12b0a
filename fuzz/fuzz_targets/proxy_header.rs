#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| condo::fuzzing::proxy_header(data));
