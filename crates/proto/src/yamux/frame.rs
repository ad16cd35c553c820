//! The 12-byte yamux frame header.

use super::{ProtocolError, StreamId};

/// Length of an encoded header.
pub const HEADER_LEN: usize = 12;

/// The only yamux protocol version.
const VERSION: u8 = 0;

/// Frame type (second header byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// Stream data; `length` is the payload length.
    Data = 0,
    /// Window update; `length` is the window delta.
    WindowUpdate = 1,
    /// Session ping; `length` is an opaque value echoed back.
    Ping = 2,
    /// Session termination; `length` is the error code.
    GoAway = 3,
}

/// Header flags (bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u16);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// Open a stream / ping request.
    pub const SYN: Flags = Flags(0x1);
    /// Accept a stream / ping response.
    pub const ACK: Flags = Flags(0x2);
    /// Half-close the sender's direction.
    pub const FIN: Flags = Flags(0x4);
    /// Abort the stream.
    pub const RST: Flags = Flags(0x8);

    /// Whether all bits of `other` are set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no bit is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub frame_type: FrameType,
    /// Flags.
    pub flags: Flags,
    /// Stream id (0 for Ping and Go Away).
    pub stream_id: StreamId,
    /// Type-specific length/value field.
    pub length: u32,
}

impl Header {
    /// A Data frame header announcing `len` payload bytes.
    pub fn data(stream_id: StreamId, len: u32, flags: Flags) -> Header {
        Header {
            frame_type: FrameType::Data,
            flags,
            stream_id,
            length: len,
        }
    }

    /// A Window Update frame header.
    pub fn window_update(stream_id: StreamId, delta: u32, flags: Flags) -> Header {
        Header {
            frame_type: FrameType::WindowUpdate,
            flags,
            stream_id,
            length: delta,
        }
    }

    /// A Ping frame (flags SYN for a request, ACK for the answer).
    pub fn ping(flags: Flags, value: u32) -> Header {
        Header {
            frame_type: FrameType::Ping,
            flags,
            stream_id: 0,
            length: value,
        }
    }

    /// A Go Away frame.
    pub fn go_away(code: u32) -> Header {
        Header {
            frame_type: FrameType::GoAway,
            flags: Flags::NONE,
            stream_id: 0,
            length: code,
        }
    }

    /// Big-endian wire encoding.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = VERSION;
        b[1] = self.frame_type as u8;
        b[2..4].copy_from_slice(&self.flags.0.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8..12].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Parses a header, rejecting unknown versions and types. Unknown flag bits are kept
    /// (and ignored by the session), as other implementations do.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, ProtocolError> {
        if b[0] != VERSION {
            return Err(ProtocolError::UnsupportedVersion(b[0]));
        }
        let frame_type = match b[1] {
            0 => FrameType::Data,
            1 => FrameType::WindowUpdate,
            2 => FrameType::Ping,
            3 => FrameType::GoAway,
            t => return Err(ProtocolError::UnknownFrameType(t)),
        };
        Ok(Header {
            frame_type,
            flags: Flags(u16::from_be_bytes([b[2], b[3]])),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}
