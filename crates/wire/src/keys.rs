//! Identity key file and peer-id helpers.
//!
//! The key file holds the libp2p protobuf `PrivateKey` encoding (what go's
//! `crypto.MarshalPrivateKey` writes and `Keypair::to_protobuf_encoding`
//! produces), so keys can be moved between circuit and other libp2p tools.
//!
//! Permissions: a new file is created with mode `0600` (parent directories
//! `0700`). On Unix an existing file that is accessible by group or others
//! (`mode & 0o077 != 0`) is **refused** with [`KeyFileError::InsecurePermissions`],
//! like ssh does with private keys: a leaked identity key lets anyone
//! impersonate the node.

use libp2p_identity::{Keypair, PeerId};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

use crate::pb::keys::PrivateKey;

/// Largest key file we read. A 4096-bit RSA PKCS#1 key is about 2.4 KiB.
pub const MAX_KEY_FILE_SIZE: u64 = 16 * 1024;

/// Longest peer id accepted from the wire: sha2-256 multihash is 34 bytes and
/// the identity multihash is capped at 42 + 2 bytes; leave room for larger
/// hashes without parsing arbitrary blobs.
pub const MAX_PEER_ID_LEN: usize = 128;

/// Errors of the key file.
#[derive(Debug, Error)]
pub enum KeyFileError {
    /// Reading or writing the file (or creating its directory) failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_KEY_FILE_SIZE`].
    #[error("key file {path} is {len} bytes, larger than any libp2p private key")]
    TooLarge {
        /// The file concerned.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file does not hold a valid libp2p protobuf private key.
    #[error("key file {path} is not a libp2p private key: {reason}")]
    Invalid {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is readable or writable by group/others.
    #[error("key file {path} has mode {mode:o}, accessible by other users; run `chmod 600` on it")]
    InsecurePermissions {
        /// The file concerned.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key could not be encoded (e.g. RSA keys cannot be written).
    #[error("cannot encode key: {0}")]
    Encode(String),
}

/// A peer id given as bytes could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PeerIdError {
    /// Longer than [`MAX_PEER_ID_LEN`].
    #[error("peer id of {0} bytes is too long")]
    TooLong(usize),
    /// Not a valid multihash peer id.
    #[error("invalid peer id: {0}")]
    Invalid(String),
}

/// Parses peer id bytes (a multihash, as in relay `Peer.id` or vouchers).
pub fn peer_id_from_bytes(bytes: &[u8]) -> Result<PeerId, PeerIdError> {
    if bytes.len() > MAX_PEER_ID_LEN {
        return Err(PeerIdError::TooLong(bytes.len()));
    }
    PeerId::from_bytes(bytes).map_err(|e| PeerIdError::Invalid(e.to_string()))
}

/// Decodes a key file's content (libp2p protobuf `PrivateKey`).
///
/// Besides what [`Keypair::from_protobuf_encoding`] accepts, the legacy 96-byte
/// Ed25519 form `seed || pub || pub` written by old go-libp2p is accepted after
/// checking that both public halves agree.
pub fn decode_private_key(bytes: &[u8]) -> Result<Keypair, String> {
    let msg = PrivateKey::decode(bytes).map_err(|e| e.to_string())?;
    if msg.r#type == 1 && msg.data.len() == 96 {
        if msg.data[32..64] != msg.data[64..96] {
            return Err("legacy Ed25519 key with mismatching public halves".into());
        }
        // Re-encode as the modern 64-byte form; the decoder then also checks
        // that the public half matches the seed.
        let modern = PrivateKey {
            r#type: 1,
            data: msg.data[..64].to_vec(),
        }
        .encode_to_vec();
        return Keypair::from_protobuf_encoding(&modern).map_err(|e| e.to_string());
    }
    Keypair::from_protobuf_encoding(bytes).map_err(|e| e.to_string())
}

/// Loads the identity key from `path`, or generates an Ed25519 key and writes
/// it there (mode 0600, parent directories created with 0700).
///
/// Returns the keypair and whether it was newly created. See the module docs
/// for the permission check on existing files.
pub fn load_or_create_identity(path: &Path) -> Result<(Keypair, bool), KeyFileError> {
    match load_identity(path) {
        Ok(k) => Ok((k, false)),
        Err(KeyFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            match write_new_identity(path, &key) {
                Ok(()) => Ok((key, true)),
                // Another process created it between our read and write: use theirs.
                Err(KeyFileError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    load_identity(path).map(|k| (k, false))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Loads an existing identity key file (see the module docs for checks).
pub fn load_identity(path: &Path) -> Result<Keypair, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    check_permissions(path, &meta)?;
    if meta.len() > MAX_KEY_FILE_SIZE {
        return Err(KeyFileError::TooLarge {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    decode_private_key(&bytes).map_err(|reason| KeyFileError::Invalid {
        path: path.to_owned(),
        reason,
    })
}

#[cfg(unix)]
fn check_permissions(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path, _: &std::fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

/// Writes `key` to a new file at `path` (mode 0600); fails with
/// `AlreadyExists` rather than overwrite an existing key.
///
/// The key is written to a temporary sibling first and then linked into
/// place, so a crash never leaves a half-written key file behind.
pub fn write_new_identity(path: &Path, key: &Keypair) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| KeyFileError::Encode(e.to_string()))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent).map_err(io)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = open_private(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        // hard_link fails with AlreadyExists instead of replacing a key that
        // appeared in the meantime (rename would silently overwrite it).
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists && !path.exists() => {
                // Filesystems without hard links: rename is still atomic,
                // only the no-clobber guarantee is weaker.
                std::fs::rename(&tmp, path)
            }
            other => other,
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(io)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "circuit-wire-keys-{}-{}-{}",
            name,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn create_then_load_same_key() {
        let dir = tmpdir("create");
        let path = dir.join("sub/dir/identity.key");
        let (k1, created) = load_or_create_identity(&path).unwrap();
        assert!(created);
        let bytes = std::fs::read(&path).unwrap();
        // Ed25519 private key protobuf: type 1, 64 data bytes.
        assert_eq!(&bytes[..4], &[0x08, 0x01, 0x12, 0x40]);
        assert_eq!(bytes.len(), 68);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (k2, created) = load_or_create_identity(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.public().to_peer_id(), k2.public().to_peer_id());
        assert!(k1.public().to_peer_id().to_base58().starts_with("12D3KooW"));
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_file_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmpdir("perm");
        let path = dir.join("identity.key");
        load_or_create_identity(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_identity(&path).unwrap_err();
        assert!(matches!(
            err,
            KeyFileError::InsecurePermissions { mode: 0o644, .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn garbage_and_oversize_files_refused() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tmpdir("garbage");
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, data: &[u8]| {
            let p = dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .unwrap();
            f.write_all(data).unwrap();
            p
        };
        let p = write("garbage", b"not a key");
        assert!(matches!(
            load_or_create_identity(&p),
            Err(KeyFileError::Invalid { .. })
        ));
        let p = write("big", &vec![0u8; MAX_KEY_FILE_SIZE as usize + 1]);
        assert!(matches!(
            load_or_create_identity(&p),
            Err(KeyFileError::TooLarge { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn legacy_96_byte_ed25519_accepted() {
        let k = Keypair::generate_ed25519();
        let modern = k.to_protobuf_encoding().unwrap();
        let pair = &modern[4..68];
        let mut data = pair.to_vec();
        data.extend_from_slice(&pair[32..64]);
        let legacy = PrivateKey {
            r#type: 1,
            data: data.clone(),
        }
        .encode_to_vec();
        let back = decode_private_key(&legacy).unwrap();
        assert_eq!(back.public(), k.public());
        // Mismatching duplicate public key is refused.
        data[95] ^= 1;
        let bad = PrivateKey { r#type: 1, data }.encode_to_vec();
        assert!(decode_private_key(&bad).is_err());
    }

    #[test]
    fn other_key_types_roundtrip() {
        for k in [Keypair::generate_secp256k1(), Keypair::generate_ecdsa()] {
            let bytes = k.to_protobuf_encoding().unwrap();
            assert_eq!(decode_private_key(&bytes).unwrap().public(), k.public());
        }
    }

    #[test]
    fn peer_id_bytes() {
        let id = Keypair::generate_ed25519().public().to_peer_id();
        let bytes = id.to_bytes();
        // identity multihash of the 36-byte public key protobuf.
        assert_eq!(&bytes[..6], &[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
        assert_eq!(peer_id_from_bytes(&bytes), Ok(id));
        assert!(peer_id_from_bytes(&bytes[..10]).is_err());
        assert_eq!(
            peer_id_from_bytes(&[0; 200]),
            Err(PeerIdError::TooLong(200))
        );
    }
}
