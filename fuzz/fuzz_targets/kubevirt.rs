//! See `vmbw::fuzzing::kubevirt_object`: no input may panic the decoder.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmbw::fuzzing::kubevirt_object(data));
