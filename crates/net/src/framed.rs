//! Length-prefixed protobuf messages on an async stream, read without losing
//! the bytes that follow the last message (relay streams turn into raw circuits
//! right after their final STATUS).

use std::io;

use circuit_wire::frame::{self, FrameDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::connection::Stream;

/// Maximum size of a relay or stop message (go-libp2p and rust-libp2p use 4096).
pub const MAX_RELAY_MESSAGE: usize = 4096;

/// Writes one length-prefixed message.
pub async fn write_message<M: prost::Message, S: AsyncWrite + Unpin>(
    io: &mut S,
    msg: &M,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(msg.encoded_len() + 10);
    frame::encode(msg, &mut out);
    io.write_all(&out).await?;
    io.flush().await
}

/// Reads one length-prefixed message of at most `max` bytes from a [`Stream`],
/// putting any bytes read past it back in front of the stream.
pub async fn read_message<M: prost::Message + Default>(
    stream: &mut Stream,
    max: usize,
) -> io::Result<M> {
    let (msg, rest) = read_message_from(stream, max).await?;
    stream.unread(rest);
    Ok(msg)
}

/// Reads one length-prefixed message of at most `max` bytes; returns it and the bytes read past it.
pub async fn read_message_from<M: prost::Message + Default, S: AsyncRead + Unpin>(
    io: &mut S,
    max: usize,
) -> io::Result<(M, Vec<u8>)> {
    let mut dec = FrameDecoder::new(max);
    let mut buf = [0u8; 1024];
    loop {
        match dec.next_frame() {
            Ok(Some(body)) => {
                let msg = frame::decode_message::<M>(&body)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                return Ok((msg, dec.take_remaining()));
            }
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended before a whole message",
            ));
        }
        dec.push(&buf[..n]);
    }
}

/// Reads length-prefixed messages until EOF (identify may split its answer), at most `max_parts`.
pub async fn read_messages_to_end<M: prost::Message + Default, S: AsyncRead + Unpin>(
    io: &mut S,
    max: usize,
    max_parts: usize,
) -> io::Result<Vec<M>> {
    let mut dec = FrameDecoder::new(max);
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        while let Some(body) = dec
            .next_frame()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        {
            out.push(
                frame::decode_message::<M>(&body)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
            );
            if out.len() > max_parts {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "too many message parts",
                ));
            }
        }
        let n = io.read(&mut buf).await?;
        if n == 0 {
            if !dec.take_remaining().is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated message",
                ));
            }
            return Ok(out);
        }
        dec.push(&buf[..n]);
    }
}
