//! The AEAD floor: what ChaCha20-Poly1305 alone costs per GiB on one core, through the
//! very code our Noise transport calls (`circuit_proto::noise::aead::Aead`: empty AD, nonce
//! = 4 zero bytes || 64-bit little-endian counter, in place), once per implementation built
//! in (OpenSSL's libcrypto, ring). A relay opens every relayed frame from one side and
//! seals it for the other, so seal + open of a GiB with the fastest implementation is the
//! least CPU a Noise relay can spend per relayed GiB.

use anyhow::bail;
use circuit_proto::noise::aead::{Aead, Implementation, TAG_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustix::time::{clock_gettime, ClockId};

/// Largest Noise plaintext: a 65 535-byte frame minus the 16-byte tag.
pub const FRAME: usize = 65_535 - TAG_LEN;
const GIB: f64 = (1u64 << 30) as f64;

/// The figures of one measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AeadFloor {
    /// Plaintext bytes sealed and then opened.
    pub bytes: u64,
    /// Frames of at most [`FRAME`] bytes.
    pub frames: u64,
    /// CPU time of the measuring thread, s.
    pub cpu_s: f64,
    /// Wall time, s.
    pub wall_s: f64,
}

impl AeadFloor {
    /// Thread CPU seconds per GiB sealed and opened.
    pub fn cpu_s_per_gib(&self) -> f64 {
        self.cpu_s / (self.bytes as f64 / GIB)
    }

    /// Wall seconds per GiB (the same, plus time the thread was not on a core).
    pub fn wall_s_per_gib(&self) -> f64 {
        self.wall_s / (self.bytes as f64 / GIB)
    }
}

/// Both ends of one Noise direction: the sender's and the receiver's cipher state.
pub struct SealOpen {
    send: Aead,
    recv: Aead,
    nonce: u64,
}

impl SealOpen {
    /// Both ends with the same random key, using implementation `imp`.
    pub fn new(imp: Implementation) -> anyhow::Result<SealOpen> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| anyhow::anyhow!("no random key"))?;
        let ends = SealOpen {
            send: Aead::with_implementation(imp, &key, true),
            recv: Aead::with_implementation(imp, &key, false),
            nonce: 0,
        };
        if ends.send.implementation() != imp {
            bail!("ChaCha20-Poly1305 implementation {imp} could not be set up");
        }
        Ok(ends)
    }

    /// Seals `frame[..len]` in place and writes the tag after it (`frame` is
    /// `len + 16` bytes), like the sending end.
    pub fn seal(&mut self, frame: &mut [u8]) -> anyhow::Result<()> {
        let Some(len) = frame.len().checked_sub(TAG_LEN) else {
            bail!("frame too short");
        };
        let (plain, tag_out) = frame.split_at_mut(len);
        let tag = self
            .send
            .seal(self.nonce, plain)
            .map_err(|_| anyhow::anyhow!("seal failed"))?;
        tag_out.copy_from_slice(&tag);
        Ok(())
    }

    /// Opens a sealed frame in place with the receiving end's key, then moves both
    /// ends to the next nonce. Fails if the frame was altered.
    pub fn open(&mut self, frame: &mut [u8]) -> anyhow::Result<()> {
        let n = self.nonce;
        self.nonce += 1;
        match self.recv.open(n, frame) {
            Ok(_) => Ok(()),
            Err(_) => bail!("open failed: frame {n} does not authenticate"),
        }
    }
}

/// Seals and opens `total` bytes (rounded up to whole frames) in `frame`-byte frames
/// on the calling thread; call it from a thread of its own (`spawn_blocking`).
pub fn measure(total: u64, frame: usize, imp: Implementation) -> anyhow::Result<AeadFloor> {
    if frame == 0 || frame > FRAME {
        bail!("frame size {frame} outside 1..={FRAME}");
    }
    let mut ends = SealOpen::new(imp)?;
    let pattern: Vec<u8> = (0..frame).map(|i| (i * 31 + 7) as u8).collect();
    let mut buf = pattern.clone();
    buf.resize(frame + TAG_LEN, 0);
    let frames = total.div_ceil(frame as u64).max(1);
    let cpu0 = clock_gettime(ClockId::ThreadCPUTime);
    let t0 = std::time::Instant::now();
    for _ in 0..frames {
        ends.seal(&mut buf)?;
        ends.open(&mut buf)?;
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu1 = clock_gettime(ClockId::ThreadCPUTime);
    // Opening restored the plaintext in place: proof that real work was done.
    if buf[..frame] != pattern[..] {
        bail!("seal + open did not give the plaintext back");
    }
    let cpu_s = (cpu1.tv_sec - cpu0.tv_sec) as f64 + (cpu1.tv_nsec - cpu0.tv_nsec) as f64 * 1e-9;
    Ok(AeadFloor {
        bytes: frames * frame as u64,
        frames,
        cpu_s,
        wall_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_the_largest_noise_plaintext() {
        assert_eq!(FRAME, 65_519);
    }

    #[test]
    fn seal_then_open_round_trips_and_a_flipped_bit_fails() {
        for &imp in Implementation::available() {
            round_trip_and_flipped_bit(imp);
        }
    }

    fn round_trip_and_flipped_bit(imp: Implementation) {
        let mut ends = SealOpen::new(imp).unwrap();
        let mut f = vec![0u8; 100 + TAG_LEN];
        f[..100].copy_from_slice(&[42u8; 100]);
        ends.seal(&mut f).unwrap();
        assert_ne!(&f[..100], &[42u8; 100][..], "sealing must encrypt");
        ends.open(&mut f).unwrap();
        assert_eq!(&f[..100], &[42u8; 100][..]);

        ends.seal(&mut f).unwrap();
        f[7] ^= 1;
        assert!(ends.open(&mut f).is_err());
    }

    #[test]
    fn ends_use_one_nonce_per_frame() {
        // The second frame is sealed under nonce 1: opening it as frame 0 fails.
        let key = [3u8; 32];
        let imp = Implementation::available()[0];
        let ends = || SealOpen {
            send: Aead::with_implementation(imp, &key, true),
            recv: Aead::with_implementation(imp, &key, false),
            nonce: 0,
        };
        let (mut a, mut b) = (ends(), ends());
        let mut f = vec![1u8; 32 + TAG_LEN];
        a.seal(&mut f).unwrap();
        a.open(&mut f).unwrap();
        a.seal(&mut f).unwrap();
        assert!(b.open(&mut f).is_err());
    }

    #[test]
    fn measure_counts_whole_frames_and_spends_cpu() {
        for &imp in Implementation::available() {
            let r = measure(1 << 20, FRAME, imp).unwrap();
            assert_eq!(r.frames, 17); // 1 MiB / 65 519 rounded up
            assert_eq!(r.bytes, 17 * FRAME as u64);
            assert!(r.cpu_s > 0.0 && r.wall_s > 0.0, "{r:?}");
            assert!(r.cpu_s_per_gib().is_finite() && r.cpu_s_per_gib() > 0.0);
            assert!(measure(1, 0, imp).is_err());
            assert!(measure(1, FRAME + 1, imp).is_err());
        }
    }
}
