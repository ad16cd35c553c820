//! ChaCha20-Poly1305 for the Noise transport phase, with two interchangeable implementations.
//!
//! Every relayed byte is opened once and sealed once, so the AEAD is most of a relay's CPU
//! (57 % of it in a profile of a relayed transfer). Two implementations are built in:
//!
//! - **OpenSSL** (libcrypto's EVP interface, through the `openssl` crate; cargo feature
//!   `openssl`, on by default): libcrypto picks its fastest code for the CPU at run time,
//!   AVX-512 included. Measured on the benchmark machine (Xeon with AVX-512, 65 519-byte
//!   frames, seal + open, one thread): 0.93–1.01 s of CPU per GiB, against 1.28–1.40 s for
//!   `ring` and 1.30–1.43 s for `aws-lc-rs`; with AVX-512 masked off (`OPENSSL_ia32cap`)
//!   OpenSSL's AVX2 code still took 1.21 s. So it is the default wherever it is built in.
//! - **ring**: BoringSSL's AVX2 code; always built in, used when the `openssl` feature is off
//!   or when asked for with [`set_implementation`] (the CLI reads `CIRCUIT_AEAD=ring`).
//!
//! Both are used the same way: one cipher object per direction keeps its key, the nonce is
//! the Noise one (32 zero bits || 64-bit little-endian counter), the AD is empty, and the
//! data is encrypted and decrypted in place. Wire output is byte-for-byte the same (the tests
//! check it against each other and against snow).

use std::sync::atomic::{AtomicU8, Ordering};

/// Length of the Poly1305 tag.
pub const TAG_LEN: usize = 16;

/// A ChaCha20-Poly1305 implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Implementation {
    /// `ring` (BoringSSL's assembly).
    Ring,
    /// OpenSSL's libcrypto (EVP), when built with the `openssl` feature.
    OpenSsl,
}

impl Implementation {
    /// The implementations built into this binary, fastest first on the machines we measured.
    pub fn available() -> &'static [Implementation] {
        if cfg!(feature = "openssl") {
            &[Implementation::OpenSsl, Implementation::Ring]
        } else {
            &[Implementation::Ring]
        }
    }

    /// Lower-case name, as `CIRCUIT_AEAD` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Implementation::Ring => "ring",
            Implementation::OpenSsl => "openssl",
        }
    }

    /// Parses a name given by [`Implementation::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<Implementation> {
        match name.to_ascii_lowercase().as_str() {
            "ring" => Some(Implementation::Ring),
            "openssl" => Some(Implementation::OpenSsl),
            _ => None,
        }
    }
}

impl std::fmt::Display for Implementation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// 0 = not chosen (the default applies), otherwise 1 + index into the enum.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// Chooses the implementation used by Noise sessions created from now on (existing sessions
/// keep theirs). Errors if it is not built into this binary.
pub fn set_implementation(imp: Implementation) -> Result<(), UnavailableError> {
    if !Implementation::available().contains(&imp) {
        return Err(UnavailableError(imp));
    }
    let v = match imp {
        Implementation::Ring => 1,
        Implementation::OpenSsl => 2,
    };
    CHOSEN.store(v, Ordering::Relaxed);
    Ok(())
}

/// The implementation new Noise sessions use: the one set with [`set_implementation`], else
/// the first of [`Implementation::available`].
pub fn implementation() -> Implementation {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Implementation::Ring,
        2 => Implementation::OpenSsl,
        _ => Implementation::available()[0],
    }
}

/// An implementation asked for is not built into this binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ChaCha20-Poly1305 implementation {0} is not built in (cargo feature `openssl`)")]
pub struct UnavailableError(pub Implementation);

/// A failed seal or open. Opening fails on any forged, tampered or truncated message; sealing
/// only if the library itself fails (never seen; the connection is dropped either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AeadError;

/// The Noise nonce for a message counter: 32 zero bits || 64-bit little-endian counter.
fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// Messages shorter than this are sealed and opened with `ring` even when OpenSSL is chosen:
/// libcrypto's EVP calls cost about 1 µs per message whatever its size, so below ~2 KiB
/// `ring` is faster (measured: 64 B 0.24 vs 1.09 µs, 1 KiB 1.0 vs 1.4 µs, 2 KiB even, 4 KiB
/// 3.3 vs 2.7 µs, 64 KiB 50 vs 33 µs). Both give the same bytes, so a session can mix them.
pub const OPENSSL_MIN_LEN: usize = 2048;

/// One direction's ChaCha20-Poly1305 key, ready to seal or open messages in place.
///
/// With [`Implementation::OpenSsl`], messages of [`OPENSSL_MIN_LEN`] bytes or more go
/// through libcrypto, smaller ones through `ring`; the libcrypto context is only made at the
/// first large message, so a connection that only ever carries small messages (a held
/// reservation, pings) costs no more than with `ring` alone (a context is about 1 KiB).
pub struct Aead {
    ring: ring::aead::LessSafeKey,
    #[cfg(feature = "openssl")]
    ossl: Option<Box<ossl::Lazy>>,
}

impl std::fmt::Debug for Aead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aead")
            .field("implementation", &self.implementation())
            .finish_non_exhaustive()
    }
}

impl Aead {
    /// A key for sealing (`seal == true`) or opening messages with the implementation
    /// chosen by [`implementation`].
    pub fn new(key: &[u8; 32], seal: bool) -> Aead {
        Aead::with_implementation(implementation(), key, seal)
    }

    /// Like [`Aead::new`] with a given implementation (`ring` if that one is not built in).
    pub fn with_implementation(imp: Implementation, key: &[u8; 32], seal: bool) -> Aead {
        // A 32-byte key is always valid for ChaCha20-Poly1305; `ring` fails only on a wrong length.
        let unbound = match ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key) {
            Ok(k) => k,
            Err(_) => unreachable!("ChaCha20-Poly1305 keys are 32 bytes"),
        };
        let _ = (imp, seal);
        Aead {
            ring: ring::aead::LessSafeKey::new(unbound),
            #[cfg(feature = "openssl")]
            ossl: (imp == Implementation::OpenSsl).then(|| Box::new(ossl::Lazy::new(*key, seal))),
        }
    }

    /// Which implementation this key uses for large messages.
    pub fn implementation(&self) -> Implementation {
        #[cfg(feature = "openssl")]
        if self.ossl.as_ref().is_some_and(|o| !o.failed()) {
            return Implementation::OpenSsl;
        }
        Implementation::Ring
    }

    /// Whether a libcrypto context has been made (at the first large message).
    pub fn has_openssl_context(&self) -> bool {
        #[cfg(feature = "openssl")]
        if let Some(o) = &self.ossl {
            return o.is_made();
        }
        false
    }

    /// The libcrypto context for a message of `len` bytes, if it should take it.
    #[cfg(feature = "openssl")]
    fn ossl_for(&mut self, len: usize) -> Option<&mut ossl::Ctx> {
        if len < OPENSSL_MIN_LEN {
            return None;
        }
        self.ossl.as_mut()?.get()
    }

    /// Encrypts `plain` in place with message counter `counter` and returns the tag.
    pub fn seal(&mut self, counter: u64, plain: &mut [u8]) -> Result<[u8; TAG_LEN], AeadError> {
        let nonce = nonce_bytes(counter);
        #[cfg(feature = "openssl")]
        if let Some(ctx) = self.ossl_for(plain.len()) {
            return ctx.seal_parts(&nonce, plain, std::iter::empty());
        }
        let tag = self
            .ring
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                plain,
            )
            .map_err(|_| AeadError)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Encrypts a message whose plaintext is partly elsewhere and returns the tag. `plain` is
    /// the message's place: it holds the plaintext already, except at the `parts` — (offset,
    /// bytes) pairs in increasing, non-overlapping order inside `plain` — whose bytes are
    /// encrypted from their source straight into place. With libcrypto (messages of
    /// [`OPENSSL_MIN_LEN`] or more) each part is read once, as the cipher's input; otherwise
    /// the parts are copied in and the message is sealed in place. The result is what
    /// [`Aead::seal`] gives for the assembled plaintext. Fails (with nothing promised about
    /// `plain`) if a part lies outside `plain` or before the previous one.
    pub fn seal_parts<'p>(
        &mut self,
        counter: u64,
        plain: &mut [u8],
        parts: impl IntoIterator<Item = (usize, &'p [u8])>,
    ) -> Result<[u8; TAG_LEN], AeadError> {
        #[cfg(feature = "openssl")]
        if let Some(ctx) = self.ossl_for(plain.len()) {
            return ctx.seal_parts(&nonce_bytes(counter), plain, parts);
        }
        let mut cur = 0;
        for (off, src) in parts {
            let end = off.checked_add(src.len()).ok_or(AeadError)?;
            if off < cur || end > plain.len() {
                return Err(AeadError);
            }
            plain[off..end].copy_from_slice(src);
            cur = end;
        }
        self.seal(counter, plain)
    }

    /// Decrypts in place a message (`ciphertext || tag`) sealed with counter `counter`;
    /// returns the plaintext, the front of `message`. Fails if the message is shorter than
    /// the tag or does not authenticate (its bytes are then unspecified).
    pub fn open<'a>(
        &mut self,
        counter: u64,
        message: &'a mut [u8],
    ) -> Result<&'a mut [u8], AeadError> {
        let Some(body_len) = message.len().checked_sub(TAG_LEN) else {
            return Err(AeadError);
        };
        let nonce = nonce_bytes(counter);
        #[cfg(feature = "openssl")]
        if let Some(ctx) = self.ossl_for(body_len) {
            let (body, tag) = message.split_at_mut(body_len);
            ctx.open(&nonce, body, tag)?;
            return Ok(body);
        }
        let _ = body_len;
        self.ring
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                message,
            )
            .map_err(|_| AeadError)
    }
}

#[cfg(feature = "openssl")]
mod ossl {
    //! libcrypto's EVP ChaCha20-Poly1305. One `EVP_CIPHER_CTX` per direction holds the key;
    //! each message only re-initialises the nonce (which also resets Poly1305 and the
    //! lengths), so no context is made per message.
    use super::{AeadError, TAG_LEN};
    use openssl::cipher::Cipher;
    use openssl::cipher_ctx::CipherCtx;
    use openssl::error::ErrorStack;

    /// The key until the first large message, then the context made from it (or the note
    /// that making it failed: `ring` then does everything).
    pub(super) enum Lazy {
        Key { key: [u8; 32], seal: bool },
        Made(Ctx),
        Failed,
    }

    impl Lazy {
        pub(super) fn new(key: [u8; 32], seal: bool) -> Lazy {
            Lazy::Key { key, seal }
        }

        pub(super) fn failed(&self) -> bool {
            matches!(self, Lazy::Failed)
        }

        pub(super) fn is_made(&self) -> bool {
            matches!(self, Lazy::Made(_))
        }

        pub(super) fn get(&mut self) -> Option<&mut Ctx> {
            if let Lazy::Key { key, seal } = self {
                *self = match Ctx::new(key, *seal) {
                    Ok(ctx) => Lazy::Made(ctx),
                    Err(e) => {
                        // Said once per process: every connection would otherwise repeat it.
                        static WARNED: std::sync::atomic::AtomicBool =
                            std::sync::atomic::AtomicBool::new(false);
                        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            tracing::warn!(error = %e, "OpenSSL ChaCha20-Poly1305 unavailable; connections use ring (CIRCUIT_AEAD=ring silences this)");
                        }
                        Lazy::Failed
                    }
                };
            }
            match self {
                Lazy::Made(ctx) => Some(ctx),
                _ => None,
            }
        }
    }

    impl Drop for Lazy {
        fn drop(&mut self) {
            // Do not leave the key bytes in freed memory (libcrypto clears its own copy).
            if let Lazy::Key { key, .. } = self {
                key.fill(0);
                // Read back through `black_box`, so the clearing is not optimised away.
                std::hint::black_box(&key);
            }
        }
    }

    pub(super) struct Ctx {
        ctx: CipherCtx,
        seal: bool,
    }

    impl Ctx {
        pub(super) fn new(key: &[u8; 32], seal: bool) -> Result<Ctx, ErrorStack> {
            let mut ctx = CipherCtx::new()?;
            let cipher = Cipher::chacha20_poly1305();
            if seal {
                ctx.encrypt_init(Some(cipher), Some(key), None)?;
            } else {
                ctx.decrypt_init(Some(cipher), Some(key), None)?;
            }
            Ok(Ctx { ctx, seal })
        }

        pub(super) fn seal_parts<'p>(
            &mut self,
            nonce: &[u8; 12],
            plain: &mut [u8],
            parts: impl IntoIterator<Item = (usize, &'p [u8])>,
        ) -> Result<[u8; TAG_LEN], AeadError> {
            debug_assert!(self.seal);
            self.try_seal_parts(nonce, plain, parts)
                .map_err(|_| AeadError)?
                .ok_or(AeadError)
        }

        /// `Ok(None)` for parts out of order or out of bounds.
        fn try_seal_parts<'p>(
            &mut self,
            nonce: &[u8; 12],
            plain: &mut [u8],
            parts: impl IntoIterator<Item = (usize, &'p [u8])>,
        ) -> Result<Option<[u8; TAG_LEN]>, ErrorStack> {
            self.ctx.encrypt_init(None, None, Some(nonce))?;
            // The plaintext in order: in-place stretches between the parts, each part from
            // its source into its place (several updates make one message, as with any
            // EVP AEAD).
            let mut cur = 0;
            for (off, src) in parts {
                let Some(end) = off.checked_add(src.len()) else {
                    return Ok(None);
                };
                if off < cur || end > plain.len() {
                    return Ok(None);
                }
                if off > cur {
                    self.ctx
                        .cipher_update_inplace(&mut plain[cur..off], off - cur)?;
                }
                if !src.is_empty() {
                    self.ctx.cipher_update(src, Some(&mut plain[off..end]))?;
                }
                cur = end;
            }
            if cur < plain.len() {
                let n = plain.len() - cur;
                self.ctx.cipher_update_inplace(&mut plain[cur..], n)?;
            }
            self.ctx.cipher_final(&mut [])?;
            let mut tag = [0u8; TAG_LEN];
            self.ctx.tag(&mut tag)?;
            Ok(Some(tag))
        }

        pub(super) fn open(
            &mut self,
            nonce: &[u8; 12],
            body: &mut [u8],
            tag: &[u8],
        ) -> Result<(), AeadError> {
            debug_assert!(!self.seal);
            // A failed tag check leaves an error record in libcrypto's thread-local queue;
            // `try_open`'s `ErrorStack` took it off, so later calls do not see it.
            self.try_open(nonce, body, tag).map_err(|_| AeadError)
        }

        fn try_open(
            &mut self,
            nonce: &[u8; 12],
            body: &mut [u8],
            tag: &[u8],
        ) -> Result<(), ErrorStack> {
            self.ctx.decrypt_init(None, None, Some(nonce))?;
            self.ctx.set_tag(tag)?;
            if !body.is_empty() {
                let n = body.len();
                self.ctx.cipher_update_inplace(body, n)?;
            }
            // Fails when the tag does not match.
            self.ctx.cipher_final(&mut [])?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    /// Every built-in implementation seals to the same bytes and opens what any other sealed.
    #[test]
    fn implementations_agree_byte_for_byte() {
        let key = [0x42u8; 32];
        for len in [
            0usize,
            1,
            15,
            16,
            17,
            63,
            64,
            65,
            1000,
            16 * 1024 + 3,
            65519,
        ] {
            let plain = message(len);
            let mut sealed = Vec::new();
            for &imp in Implementation::available() {
                let mut k = Aead::with_implementation(imp, &key, true);
                assert_eq!(k.implementation(), imp);
                let mut buf = plain.clone();
                let tag = k.seal(5, &mut buf).unwrap();
                buf.extend_from_slice(&tag);
                sealed.push(buf);
            }
            for s in &sealed {
                assert_eq!(s, &sealed[0], "ciphertexts differ at length {len}");
            }
            for &imp in Implementation::available() {
                let mut k = Aead::with_implementation(imp, &key, false);
                let mut buf = sealed[0].clone();
                let opened = k.open(5, &mut buf).unwrap();
                assert_eq!(opened, &plain[..], "{imp} failed to open at length {len}");
            }
        }
    }

    /// One long-lived key sealing a run of small and large messages gives what a fresh
    /// `ring` key gives for each: re-initialising the OpenSSL context per message resets all
    /// its state, and switching between ring (small) and OpenSSL (large) keeps the stream.
    #[test]
    fn sealing_many_messages_with_one_context_matches_fresh_keys() {
        let key = [9u8; 32];
        let len = |counter: u64| [100, 5000, 2047, 2048, 0, 65519, 17][counter as usize % 7];
        for &imp in Implementation::available() {
            let mut long_lived = Aead::with_implementation(imp, &key, true);
            let mut opener = Aead::with_implementation(imp, &key, false);
            for counter in 0..21u64 {
                let mut a = message(len(counter));
                let ta = long_lived.seal(counter, &mut a).unwrap();
                let mut sealed = a.clone();
                sealed.extend_from_slice(&ta);
                assert_eq!(
                    opener.open(counter, &mut sealed).unwrap(),
                    &message(len(counter))[..]
                );
                let mut fresh = Aead::with_implementation(Implementation::Ring, &key, true);
                let mut b = message(len(counter));
                let tb = fresh.seal(counter, &mut b).unwrap();
                assert_eq!((a, ta), (b, tb), "{imp}, message {counter}");
            }
        }
    }

    /// Sealing with parts encrypted from elsewhere gives the bytes and tag of sealing the
    /// assembled plaintext, for every implementation, small and large messages, parts at
    /// odd offsets and lengths (libcrypto fed in many uneven updates), and bad parts fail.
    #[test]
    fn sealing_with_parts_matches_sealing_the_whole() {
        let key = [11u8; 32];
        let cases: &[(usize, &[(usize, usize)])] = &[
            (100, &[(12, 88)]),
            (5000, &[]),
            (5000, &[(0, 5000)]),
            (5000, &[(12, 100), (124, 4000), (4136, 864)]),
            (
                65519,
                &[(12, 16372), (16396, 16372), (32780, 1), (32793, 32714)],
            ),
            (4096, &[(1, 63), (64, 65), (141, 3000)]),
            (2048, &[(2047, 1)]),
        ];
        for &imp in Implementation::available() {
            for (counter, &(len, parts)) in cases.iter().enumerate() {
                let whole = message(len);
                let mut expected = whole.clone();
                let want = Aead::with_implementation(Implementation::Ring, &key, true)
                    .seal(counter as u64, &mut expected)
                    .unwrap();
                // Parts' places hold garbage; their bytes come from `whole`.
                let mut place = whole.clone();
                for &(off, n) in parts {
                    place[off..off + n].fill(0xEE);
                }
                let srcs: Vec<(usize, &[u8])> = parts
                    .iter()
                    .map(|&(off, n)| (off, &whole[off..off + n]))
                    .collect();
                let mut k = Aead::with_implementation(imp, &key, true);
                let tag = k.seal_parts(counter as u64, &mut place, srcs).unwrap();
                assert_eq!((&place, tag), (&expected, want), "{imp}, case {counter}");
            }
            // Out of bounds, overlapping, overflowing: refused, large (libcrypto) and small.
            let mut k = Aead::with_implementation(imp, &key, true);
            let src = [1u8; 10];
            for len in [100usize, 5000] {
                for bad in [
                    vec![(len - 5, &src[..])],
                    vec![(50, &src[..]), (55, &src[..])],
                    vec![(usize::MAX, &src[..])],
                ] {
                    let mut place = vec![0u8; len];
                    assert!(
                        k.seal_parts(0, &mut place, bad.clone()).is_err(),
                        "{imp} {len}: {bad:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn tampering_wrong_counter_and_short_messages_fail_to_open() {
        let key = [1u8; 32];
        for &imp in Implementation::available() {
            let mut s = Aead::with_implementation(imp, &key, true);
            let mut o = Aead::with_implementation(imp, &key, false);
            let mut buf = message(300);
            let tag = s.seal(0, &mut buf).unwrap();
            buf.extend_from_slice(&tag);
            for i in [0, 150, 299, 300, 315] {
                let mut bad = buf.clone();
                bad[i] ^= 1;
                assert!(
                    o.open(0, &mut bad).is_err(),
                    "{imp}: flipped byte {i} accepted"
                );
            }
            assert!(
                o.open(1, &mut buf.clone()).is_err(),
                "{imp}: wrong counter accepted"
            );
            assert!(
                o.open(0, &mut buf[..15].to_vec()).is_err(),
                "{imp}: short message accepted"
            );
            // After failures the context still opens good messages.
            assert_eq!(o.open(0, &mut buf.clone()).unwrap(), &message(300)[..]);
        }
    }

    /// The libcrypto context is made at the first message of [`OPENSSL_MIN_LEN`] bytes, not
    /// before: a connection carrying only small messages never pays for one.
    #[test]
    fn openssl_context_is_made_at_the_first_large_message() {
        let key = [5u8; 32];
        let mut s = Aead::with_implementation(Implementation::OpenSsl, &key, true);
        let mut o = Aead::with_implementation(Implementation::OpenSsl, &key, false);
        let mut small = message(OPENSSL_MIN_LEN - 1);
        let tag = s.seal(0, &mut small).unwrap();
        small.extend_from_slice(&tag);
        o.open(0, &mut small).unwrap();
        assert!(!s.has_openssl_context() && !o.has_openssl_context());
        let mut large = message(OPENSSL_MIN_LEN);
        let tag = s.seal(1, &mut large).unwrap();
        large.extend_from_slice(&tag);
        o.open(1, &mut large).unwrap();
        let built_in = cfg!(feature = "openssl");
        assert_eq!(s.has_openssl_context(), built_in);
        assert_eq!(o.has_openssl_context(), built_in);
        let ring = Aead::with_implementation(Implementation::Ring, &key, true);
        assert_eq!(ring.implementation(), Implementation::Ring);
    }

    #[test]
    fn names_round_trip_and_unavailable_is_refused() {
        for &imp in Implementation::available() {
            assert_eq!(Implementation::from_name(imp.name()), Some(imp));
        }
        assert_eq!(
            Implementation::from_name("OpenSSL"),
            Some(Implementation::OpenSsl)
        );
        assert_eq!(Implementation::from_name("aes"), None);
        if !cfg!(feature = "openssl") {
            assert!(set_implementation(Implementation::OpenSsl).is_err());
        }
    }
}
