//! Helpers shared by the fuzz targets.

/// Splits fuzzer input into a stream of chunks, the way bytes arrive from a
/// socket: the first byte seeds the chunk sizes (1..=64 bytes, or everything
/// at once when it is 0), the rest is the data.
pub fn chunks(input: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (seed, mut data) = match input.split_first() {
        Some((s, d)) => (*s, d),
        None => (0, &input[..0]),
    };
    let mut state = u32::from(seed) | 1;
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let n = if seed == 0 {
            data.len()
        } else {
            // xorshift32: deterministic, so a crash reproduces from its input.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            1 + (state % 64) as usize
        };
        let (head, tail) = data.split_at(n.min(data.len()));
        data = tail;
        Some(head)
    })
}

/// A fixed identity, so runs are reproducible and keys are not what is fuzzed.
pub fn identity() -> libp2p_identity::Keypair {
    libp2p_identity::Keypair::ed25519_from_bytes([7u8; 32]).expect("a valid ed25519 secret")
}
