// Browser side of the circuit browser test: js-libp2p in (headless) Chromium.
//
// Bundled by run.mjs with esbuild into dist/page.js and loaded by index.html.
// The driver calls the functions on `window.circuitTest` through
// puppeteer's page.evaluate; each returns plain JSON-able values and throws
// (rejecting the evaluate) with a clear message on failure. Everything the
// page does is also appended to the on-page log, which ends up in the
// screenshot.

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { version as libp2pVersion } from 'libp2p/version'

const PIPE_PROTOCOL = '/circuit/pipe/1.0.0'
const PING_PROTOCOL = '/ipfs/ping/1.0.0'
const PING_LENGTH = 32
// Bound on how much one inbound pipe stream may echo, so a misbehaving peer
// cannot make the page buffer without limit (the echo itself does not buffer,
// this only bounds the bookkeeping and the test's running time).
const MAX_PIPE_BYTES = 64 * 1024 * 1024

/** The one libp2p node of this page (set by start()). */
let node = null

/** What the page observed as the listening side, for the driver to check. */
const inbound = {
  /** One entry per inbound connection: { peer, addr, limited }. */
  connections: [],
  /** One entry per inbound pipe stream: { peer, bytes, state: echoing|closing|done|failed, error? }. */
  pipes: []
}

/** Append a line to the on-page log (and the console, which the driver forwards). */
function show (line) {
  const el = document.getElementById('log')
  if (el != null) {
    el.textContent += line + '\n'
  }
  console.log('[page] ' + line)
}

function setField (id, text) {
  const el = document.getElementById(id)
  if (el != null) {
    el.textContent = text
  }
}

/** byte[i] = (i * 31 + 7) % 251, the same pattern as interop/js. */
function pattern (n) {
  const data = new Uint8Array(n)
  for (let i = 0; i < n; i++) {
    data[i] = (i * 31 + 7) % 251
  }
  return data
}

function equalBytes (a, b) {
  if (a.byteLength !== b.byteLength) {
    return false
  }
  for (let i = 0; i < a.byteLength; i++) {
    if (a[i] !== b[i]) {
      return false
    }
  }
  return true
}

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
async function * readChunks (stream) {
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

/** Pull-style reader over a stream (see readChunks). */
class ByteReader {
  constructor (stream) {
    this.it = readChunks(stream)
    this.buf = new Uint8Array(0)
  }

  /** Read exactly `n` bytes or throw on EOF. */
  async readExact (n) {
    while (this.buf.byteLength < n) {
      const { done, value } = await this.it.next()
      if (done) {
        throw new Error(`stream ended after ${this.buf.byteLength}/${n} bytes`)
      }
      const chunk = value
      const next = new Uint8Array(this.buf.byteLength + chunk.byteLength)
      next.set(this.buf, 0)
      next.set(chunk, this.buf.byteLength)
      this.buf = next
    }
    const res = this.buf.subarray(0, n)
    this.buf = this.buf.subarray(n)
    return res
  }

  /** Read until the remote closes its side; anything more is an error. */
  async end () {
    for (;;) {
      const { done, value } = await this.it.next()
      if (done) {
        return
      }
      if (value.byteLength > 0) {
        throw new Error(`unexpected ${value.byteLength} bytes after the last ping`)
      }
    }
  }
}

/** Echo an inbound pipe stream until the remote half-closes, then close. */
async function handlePipe (stream, connection) {
  // The entry is visible while the pipe runs, so a stalled pipe shows how far it got.
  const entry = { peer: connection.remotePeer.toString(), bytes: 0, state: 'echoing' }
  inbound.pipes.push(entry)
  show(`pipe stream from ${entry.peer}`)
  try {
    for await (const bytes of readChunks(stream)) {
      entry.bytes += bytes.byteLength
      if (entry.bytes > MAX_PIPE_BYTES) {
        throw new Error(`pipe longer than ${MAX_PIPE_BYTES} bytes`)
      }
      if (!stream.send(bytes)) {
        await stream.onDrain()
      }
    }
    entry.state = 'closing'
    await stream.close()
    entry.state = 'done'
    show(`echoed ${entry.bytes} bytes for ${entry.peer}`)
  } catch (err) {
    entry.state = 'failed'
    entry.error = String(err)
    show(`pipe from ${entry.peer} failed after ${entry.bytes} bytes: ${err}`)
    stream.abort(err)
  }
}

/**
 * (a) Start js-libp2p, connect to the relay over WebSocket and reserve a
 * slot. Resolves with our PeerId and our own addresses once one of them is a
 * `/p2p-circuit` address (the reservation was accepted).
 */
async function start (relayWsAddr, timeoutMs = 30_000) {
  if (node != null) {
    throw new Error('start() called twice')
  }
  const relayMa = multiaddr(relayWsAddr)
  if (relayMa.getComponents().find(c => c.name === 'p2p') == null) {
    throw new Error(`relay address must end with /p2p/<relay id>: ${relayWsAddr}`)
  }
  setField('relay', relayWsAddr)
  show(`js-libp2p ${libp2pVersion}; reserving on ${relayWsAddr}`)

  node = await createLibp2p({
    transports: [webSockets(), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    // js-libp2p's browser default gater refuses ws:// and private (loopback)
    // addresses; this test talks plain WebSocket to a relay on 127.0.0.1.
    connectionGater: { denyDialMultiaddr: () => false },
    // Listening on <relay>/p2p-circuit makes the circuit transport dial the
    // relay and run the RESERVE exchange while the node starts.
    addresses: { listen: [relayMa.encapsulate('/p2p-circuit').toString()] },
    services: { identify: identify(), ping: ping() },
    // Start only after the handlers and event listeners are in place.
    start: false
  })

  node.addEventListener('connection:open', (evt) => {
    const conn = evt.detail
    if (conn.direction === 'inbound') {
      const entry = { peer: conn.remotePeer.toString(), addr: conn.remoteAddr.toString(), limited: conn.limits != null }
      inbound.connections.push(entry)
      show(`inbound connection from ${entry.peer} via ${entry.addr}`)
    }
  })
  await node.handle(PIPE_PROTOCOL, handlePipe, { runOnLimitedConnection: true })

  const reserved = new Promise((resolve) => {
    const check = () => {
      if (node.getMultiaddrs().some(ma => ma.toString().includes('/p2p-circuit'))) {
        node.removeEventListener('self:peer:update', check)
        resolve()
      }
    }
    node.addEventListener('self:peer:update', check)
    check()
  })
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no reservation on ${relayWsAddr} within ${timeoutMs} ms`)), timeoutMs)
  })
  try {
    await node.start()
    await Promise.race([reserved, timeout])
  } finally {
    clearTimeout(timer)
  }

  const addrs = node.getMultiaddrs().map(String)
  const peerId = node.peerId.toString()
  setField('peer', peerId)
  setField('addrs', addrs.join('\n'))
  show(`reserved; own addresses:\n  ${addrs.join('\n  ')}`)
  return { peerId, addrs, libp2pVersion, userAgent: navigator.userAgent }
}

function requireNode () {
  if (node == null) {
    throw new Error('call start() first')
  }
  return node
}

/**
 * (c) Dial `addr` (normally `<relay ws addr>/p2p-circuit/p2p/<peer>`), then
 * send `n` pattern bytes on `/circuit/pipe/1.0.0`, half-close and check that
 * exactly the same bytes come back.
 */
async function dialEcho (addr, n, timeoutMs = 30_000) {
  const signal = AbortSignal.timeout(timeoutMs)
  const conn = await requireNode().dial(multiaddr(addr), { signal })
  show(`connected to ${conn.remotePeer} via ${conn.remoteAddr}`)
  const stream = await conn.newStream(PIPE_PROTOCOL, { runOnLimitedConnection: true, signal })
  const expected = pattern(n)
  const received = new Uint8Array(n)
  let got = 0
  const started = performance.now()

  // Read concurrently with writing so the echo never stalls on backpressure.
  const reading = (async () => {
    for await (const bytes of readChunks(stream)) {
      if (got + bytes.byteLength > n) {
        throw new Error(`echo longer than sent: ${got + bytes.byteLength} > ${n}`)
      }
      received.set(bytes, got)
      got += bytes.byteLength
    }
  })()

  const CHUNK = 16 * 1024
  for (let off = 0; off < n; off += CHUNK) {
    if (!stream.send(expected.subarray(off, Math.min(off + CHUNK, n)))) {
      await stream.onDrain({ signal })
    }
  }
  await stream.close({ signal }) // half-close: the echo side then closes too
  await reading
  const ms = performance.now() - started
  if (got !== n) {
    throw new Error(`echo short: got ${got} of ${n} bytes`)
  }
  if (!equalBytes(expected, received)) {
    throw new Error('echo differs from the data sent')
  }
  show(`echo OK: ${n} bytes to ${conn.remotePeer} and back in ${ms.toFixed(1)} ms`)
  return { peer: conn.remotePeer.toString(), remoteAddr: conn.remoteAddr.toString(), bytes: n, ms, limited: conn.limits != null }
}

/**
 * (c) Ping `addr` `count` times. The RTTs come from our own pings on one
 * `/ipfs/ping/1.0.0` stream timed with performance.now() (sub-millisecond);
 * the library's ping service (one new stream per ping, whole milliseconds)
 * is run once as well, so both code paths are exercised.
 */
async function pingPeer (addr, count = 3, timeoutMs = 30_000) {
  const signal = AbortSignal.timeout(timeoutMs)
  const n = requireNode()
  const conn = await n.dial(multiaddr(addr), { signal })
  const stream = await conn.newStream(PING_PROTOCOL, { runOnLimitedConnection: true, signal })
  const reader = new ByteReader(stream)
  const rtts = []
  for (let i = 0; i < count; i++) {
    const payload = crypto.getRandomValues(new Uint8Array(PING_LENGTH))
    const t0 = performance.now()
    if (!stream.send(payload)) {
      await stream.onDrain({ signal })
    }
    const echo = await reader.readExact(PING_LENGTH)
    const rtt = performance.now() - t0
    if (!equalBytes(payload, echo)) {
      throw new Error(`ping ${i + 1}: payload mismatch`)
    }
    rtts.push(rtt)
    show(`ping ${i + 1} to ${conn.remotePeer}: ${rtt.toFixed(3)} ms`)
  }
  await stream.close({ signal })
  // Wait until the remote has closed its side too: the library's ping service
  // allows one outbound ping stream per connection, and ours counts until then.
  await Promise.race([
    reader.end(),
    new Promise((resolve, reject) => signal.addEventListener('abort', () => reject(new Error('ping stream: remote did not close')), { once: true }))
  ])
  if (stream.status === 'open' || stream.status === 'closing') {
    await new Promise((resolve) => {
      stream.addEventListener('close', resolve, { once: true })
      signal.addEventListener('abort', resolve, { once: true })
    })
  }
  const serviceRtt = await n.services.ping.ping(multiaddr(addr), { signal, runOnLimitedConnection: true })
  show(`library ping to ${conn.remotePeer}: ${serviceRtt} ms`)
  return { peer: conn.remotePeer.toString(), rtts, serviceRtt }
}

/** (b) What the page saw as the listening side so far. */
function inboundReport () {
  return JSON.parse(JSON.stringify(inbound))
}

/** Stop the node (end of test). */
async function stop () {
  if (node != null) {
    await node.stop()
    show('stopped')
  }
}

window.circuitTest = { start, dialEcho, pingPeer, inboundReport, stop, show }
window.circuitTestReady = true
