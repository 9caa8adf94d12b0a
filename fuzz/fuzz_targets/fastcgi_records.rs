#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| condo::fuzzing::fastcgi_records(data));
