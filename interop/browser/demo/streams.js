// Stream reading for the demo page, with the workaround for a js-libp2p
// 3.3.11 race (the same as interop/browser/page.js; see README.md there,
// "Two js-libp2p 3.3.11 stream races").

// Pause the stream while this many received bytes wait to be consumed.
const READ_HIGH_WATER = 1024 * 1024

/**
 * Iterate over the data a stream receives until its readable end ends.
 *
 * Used instead of `for await (const chunk of stream)`, which can hang in
 * js-libp2p 3.x (@libp2p/utils AbstractMessageStream): when a stream's data
 * *and* the remote's half-close arrive before the handler runs (our Rust
 * dialer negotiates optimistically, so data and FIN can come in one burst),
 * the `remoteCloseWrite` event fires while nobody listens; the stream's own
 * iterator then delivers the buffered data but only ends on `close` or
 * `remoteCloseWrite`, never on the `end` event that follows the data. Here we
 * listen for `end` and also check `readableEnded`.
 */
export async function * readChunks (stream) {
  const queue = []
  let queued = 0
  let ended = false
  let failure = null
  let wake = null
  const notify = () => {
    const w = wake
    wake = null
    w?.()
  }
  const onMessage = (evt) => {
    const bytes = evt.data.subarray()
    queue.push(bytes)
    queued += bytes.byteLength
    if (queued > READ_HIGH_WATER && stream.readStatus === 'readable') {
      stream.pause()
    }
    notify()
  }
  const onEnd = () => {
    ended = true
    notify()
  }
  const onClose = (evt) => {
    if (evt.error != null) {
      failure = evt.error
    }
    ended = true
    notify()
  }
  stream.addEventListener('message', onMessage)
  stream.addEventListener('end', onEnd)
  stream.addEventListener('close', onClose)
  try {
    for (;;) {
      if (queue.length > 0) {
        const bytes = queue.shift()
        queued -= bytes.byteLength
        if (queued <= READ_HIGH_WATER / 2 && stream.readStatus === 'paused') {
          stream.resume()
        }
        yield bytes
        continue
      }
      if (failure != null) {
        throw failure
      }
      // After a graceful `close` the stream may still hold data it is about
      // to dispatch; `end` itself only fires once that buffer is empty.
      if ((ended || stream.readableEnded) && stream.readBufferLength === 0) {
        return
      }
      await new Promise(resolve => { wake = resolve })
    }
  } finally {
    stream.removeEventListener('message', onMessage)
    stream.removeEventListener('end', onEnd)
    stream.removeEventListener('close', onClose)
  }
}

