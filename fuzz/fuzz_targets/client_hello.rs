#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| condo::fuzzing::client_hello(data));
