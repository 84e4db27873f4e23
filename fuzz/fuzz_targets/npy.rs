#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fhec_fuzz::npy(data));
