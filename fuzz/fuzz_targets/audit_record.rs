#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certautopilot::fuzzing::audit_record(data);
});
