//! Varint and length-delimited frame decoding, as every protobuf protocol reads
//! its messages: a decoded varint is minimal and re-encodes to its bytes; the
//! frame decoder never yields a frame over its maximum, whatever the chunking.
#![no_main]

use circuit_wire::frame::FrameDecoder;
use circuit_wire::pb::relay::HopMessage;
use circuit_wire::varint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(Some((v, n))) = varint::decode_u64(input) {
        assert!(n <= varint::MAX_LEN && n <= input.len());
        let mut re = Vec::new();
        varint::encode_u64(v, &mut re);
        assert_eq!(&re[..], &input[..n], "non-minimal varint accepted");
    }

    const MAX: usize = 4096;
    let mut dec = FrameDecoder::new(MAX);
    let mut pushed = 0;
    for chunk in circuit_fuzz::chunks(input) {
        pushed += chunk.len();
        dec.push(chunk);
        assert!(dec.buffered_len() <= pushed);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX);
                    let _ = circuit_wire::frame::decode_message::<HopMessage>(&frame);
                }
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(dec.next_frame(), Err(e), "frame error not sticky");
                    return;
                }
            }
        }
    }
    let _ = dec.finish();
});
