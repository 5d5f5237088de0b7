//! See `vmbw::fuzzing::qmp_line`: no input may panic the decoder.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmbw::fuzzing::qmp_line(data));
