// js-libp2p 0.42 interop test peer for the circuit project: circuit relay v1
// (`/libp2p/circuit/relay/0.1.0`) only. js-libp2p 0.42.x is the last release
// that ships v1; 0.43 replaced it with v2.
//
// Modes (see README.md for the full stdout contract):
//   relay  --listen ADDR [--listen ADDR]... [--hop-timeout-secs N]
//   listen --relay ADDR
//   dial   ADDR [--bytes N] [--pings N] [--wait-secs N]
//
// Events go to stdout, one per line; everything else (js-libp2p debug logs via
// DEBUG=libp2p:*, our own diagnostics) goes to stderr.

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import net from 'node:net'

const PIPE_PROTOCOL = '/circuit/pipe/1.0.0'
const PING_PROTOCOL = '/ipfs/ping/1.0.0'
const PING_LENGTH = 32
// Whole-run bound for `dial`; the env override exists only so the timeout path
// itself can be exercised quickly (see README.md).
const DIAL_TIMEOUT_MS = Number.parseInt(process.env.JS_PEER_DIAL_TIMEOUT_MS ?? '', 10) > 0
  ? Number.parseInt(process.env.JS_PEER_DIAL_TIMEOUT_MS, 10)
  : 60_000
// js-libp2p 0.42 runs the *whole* relayed circuit on the relay (HOP request
// read + STOP exchange + byte copying) under one abort timer of
// `relay.hop.timeout` ms (default 30 s), so by default every relayed
// connection is cut after 30 s. We raise it to one hour unless told otherwise.
const DEFAULT_HOP_TIMEOUT_SECS = 3600
// setTimeout's upper bound (ms); longer timers fire immediately in Node.
const MAX_TIMER_MS = 2_147_483_647

// @libp2p/tcp 6 leaves Nagle's algorithm on. yamux/noise of this era write a
// frame header and its body as separate socket writes, so every small message
// waits for the peer's delayed ACK (~40 ms per TCP hop; pings over a relay
// measured 60-200 ms on loopback). Disable Nagle on every socket the TCP
// transport opens or accepts; it calls net.connect / net.createServer on this
// same module object.
const netConnect = net.connect
net.connect = (...args) => netConnect(...args).setNoDelay(true)
const netCreateServer = net.createServer
net.createServer = (options, listener) => typeof options === 'function'
  ? netCreateServer({ noDelay: true }, options)
  : netCreateServer({ ...options, noDelay: true }, listener)

/** Print one event line on stdout. */
function out (line) {
  process.stdout.write(line + '\n')
}

/** Print a diagnostic on stderr. */
function log (...args) {
  console.error('[js-v1-peer]', ...args)
}

/** Flush stdout, then exit with `code`. */
function exit (code) {
  process.stdout.write('', () => process.exit(code))
}

class UsageError extends Error {}

/** Parse a non-negative integer flag value. */
function parseCount (flag, value) {
  if (value == null || !/^\d+$/.test(value)) {
    throw new UsageError(`${flag} needs a non-negative integer, got ${value}`)
  }
  const n = Number(value)
  if (!Number.isSafeInteger(n)) {
    throw new UsageError(`${flag} is too large: ${value}`)
  }
  return n
}

/**
 * Split argv into positional args and flags. Flags listed in `multi` may repeat;
 * all flags take exactly one value.
 */
function parseArgs (argv, known, multi = []) {
  const positional = []
  const flags = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a.startsWith('--')) {
      const name = a.slice(2)
      if (!known.includes(name)) {
        throw new UsageError(`unknown flag ${a}`)
      }
      const value = argv[++i]
      if (value == null) {
        throw new UsageError(`${a} needs a value`)
      }
      if (multi.includes(name)) {
        (flags[name] ??= []).push(value)
      } else {
        flags[name] = value
      }
    } else {
      positional.push(a)
    }
  }
  return { positional, flags }
}

/**
 * Options shared by every mode. In js-libp2p 0.42 circuit relay v1 is a
 * transport that is always on (`relay.enabled`), and *every* node with it
 * answers HOP requests (the transport's hopEnabled() is hard-wired to true);
 * `hop.enabled` only controls DHT advertising, which we switch off.
 */
function baseOptions (hopTimeoutMs = 30_000) {
  return {
    transports: [tcp(), webSockets()],
    connectionEncryption: [noise()],
    streamMuxers: [yamux()],
    relay: {
      enabled: true,
      hop: { enabled: true, active: false, timeout: hopTimeoutMs },
      advertise: { enabled: false },
      autoRelay: { enabled: false }
    },
    // No UPnP/NAT-PMP probing and no background dialing: tests are loopback-only.
    nat: { enabled: false },
    connectionManager: {
      autoDial: false,
      // Loopback test peers open many connections quickly; keep them out of
      // the inbound rate limiter.
      allow: ['/ip4/127.0.0.1', '/ip6/::1']
    },
    peerRouting: { refreshManager: { enabled: false } }
  }
}

/** Stop the node on SIGTERM/SIGINT (bounded) and exit 0. */
function exitOnSignal (node) {
  const onSignal = (sig) => {
    log(`got ${sig}, stopping`)
    const force = setTimeout(() => exit(0), 2000)
    force.unref()
    node.stop().catch(err => log('stop failed', err)).finally(() => exit(0))
  }
  process.once('SIGTERM', onSignal)
  process.once('SIGINT', onSignal)
}

/** Append /p2p/<peerId> unless the address already ends with it. */
function withPeer (addr, peerId) {
  return addr.endsWith(`/p2p/${peerId}`) ? addr : `${addr}/p2p/${peerId}`
}

/** Uint8Array view of a chunk (Uint8Array or Uint8ArrayList). */
function bytesOf (chunk) {
  return chunk instanceof Uint8Array ? chunk : chunk.subarray()
}

// ---------------------------------------------------------------- relay ----

async function runRelay (argv) {
  const { positional, flags } = parseArgs(argv, ['listen', 'hop-timeout-secs'], ['listen'])
  if (positional.length > 0) {
    throw new UsageError(`unexpected argument ${positional[0]}`)
  }
  const listen = flags.listen ?? []
  if (listen.length === 0) {
    throw new UsageError('relay needs at least one --listen ADDR')
  }
  const hopSecs = flags['hop-timeout-secs'] != null
    ? parseCount('--hop-timeout-secs', flags['hop-timeout-secs'])
    : DEFAULT_HOP_TIMEOUT_SECS
  if (hopSecs === 0) {
    throw new UsageError('--hop-timeout-secs must be > 0')
  }
  const hopTimeoutMs = Math.min(hopSecs * 1000, MAX_TIMER_MS)

  const node = await createLibp2p({
    ...baseOptions(hopTimeoutMs),
    addresses: { listen }
  })
  exitOnSignal(node)

  const peerId = node.peerId.toString()
  out(`PEER ${peerId}`)
  const addrs = node.getMultiaddrs().filter(ma => !ma.toString().includes('/p2p-circuit'))
  if (addrs.length === 0) {
    throw new Error('relay has no listen addresses')
  }
  for (const ma of addrs) {
    out(`LISTEN ${withPeer(ma.toString(), peerId)}`)
  }
  out('READY')
}

// --------------------------------------------------------------- listen ----

/** Echo everything until the remote half-closes, then close and report. */
async function handlePipe ({ stream, connection }) {
  let total = 0
  try {
    // The sink ends (yamux FIN) when the echo source ends, i.e. when the
    // remote half-closed and every byte was written back.
    await stream.sink((async function * () {
      for await (const chunk of stream.source) {
        const bytes = bytesOf(chunk)
        total += bytes.byteLength
        yield bytes
      }
    })())
    out(`PIPE ${total}`)
  } catch (err) {
    log(`pipe from ${connection.remotePeer} failed after ${total} bytes:`, err)
    stream.abort(err)
  }
}

async function runListen (argv) {
  const { positional, flags } = parseArgs(argv, ['relay'])
  if (positional.length > 0) {
    throw new UsageError(`unexpected argument ${positional[0]}`)
  }
  const relay = flags.relay
  if (relay == null) {
    throw new UsageError('listen needs --relay ADDR')
  }
  const relayMa = multiaddr(relay)
  if (relayMa.getPeerId() == null) {
    throw new UsageError('--relay ADDR must end with /p2p/<relay peer id>')
  }

  const node = await createLibp2p({
    ...baseOptions(),
    // Listening on <relay>/p2p-circuit makes the v1 circuit listener open a
    // connection to the relay during start(); v1 has no reservation, the
    // relay just needs that connection to exist when a HOP arrives.
    addresses: { listen: [relayMa.encapsulate('/p2p-circuit').toString()] },
    start: false
  })
  exitOnSignal(node)

  const peerId = node.peerId.toString()
  out(`PEER ${peerId}`)

  node.components.upgrader.addEventListener('connection', (evt) => {
    const conn = evt.detail
    if (conn.stat.direction === 'inbound' && conn.remoteAddr.toString().includes('/p2p-circuit')) {
      out(`INBOUND ${conn.remotePeer}`)
    }
  })
  node.addEventListener('peer:disconnect', (evt) => {
    if (evt.detail.remotePeer.toString() === relayMa.getPeerId()) {
      log('lost the connection to the relay')
    }
  })
  await node.handle(PIPE_PROTOCOL, (data) => { void handlePipe(data) })

  // start() resolves after the circuit listener is connected to the relay
  // (the transport manager treats a failed listen as fatal).
  await node.start()
  const relayConns = node.getConnections(relayMa.getPeerId())
  if (relayConns.length === 0) {
    throw new Error('no connection to the relay after start')
  }
  log('own addresses:', node.getMultiaddrs().map(String).join(' '))
  out(`LISTENING ${relay}/p2p-circuit/p2p/${peerId}`)
}

// ----------------------------------------------------------------- dial ----

/**
 * Minimal push queue usable as a stream sink source: push() chunks, end()
 * to finish (which half-closes the stream once the sink drains it).
 */
function pushQueue () {
  const items = []
  let wake = null
  let ended = false
  return {
    push (chunk) { items.push(chunk); wake?.(); wake = null },
    end () { ended = true; wake?.(); wake = null },
    async * [Symbol.asyncIterator] () {
      while (true) {
        if (items.length > 0) {
          yield items.shift()
        } else if (ended) {
          return
        } else {
          await new Promise(resolve => { wake = resolve })
        }
      }
    }
  }
}

/** Pull-style reader over a stream's source. */
class ByteReader {
  constructor (source) {
    this.it = source[Symbol.asyncIterator]()
    this.buf = new Uint8Array(0)
  }

  /** Read exactly `n` bytes or throw on EOF. */
  async readExact (n) {
    while (this.buf.byteLength < n) {
      const { done, value } = await this.it.next()
      if (done) {
        throw new Error(`stream ended after ${this.buf.byteLength}/${n} bytes`)
      }
      const chunk = bytesOf(value)
      const next = new Uint8Array(this.buf.byteLength + chunk.byteLength)
      next.set(this.buf, 0)
      next.set(chunk, this.buf.byteLength)
      this.buf = next
    }
    const res = this.buf.subarray(0, n)
    this.buf = this.buf.subarray(n)
    return res
  }
}

/** byte[i] = (i * 31 + 7) % 251 */
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

/** Ping `count` times over one /ipfs/ping/1.0.0 stream, printing RTTs in ms. */
async function doPings (conn, count, signal) {
  if (count === 0) {
    return
  }
  const stream = await conn.newStream(PING_PROTOCOL, { signal })
  const queue = pushQueue()
  const sinkDone = stream.sink(queue)
  const reader = new ByteReader(stream.source)
  for (let i = 0; i < count; i++) {
    const payload = crypto.getRandomValues(new Uint8Array(PING_LENGTH))
    const start = performance.now()
    queue.push(payload)
    const echo = await reader.readExact(PING_LENGTH)
    const rtt = performance.now() - start
    if (!equalBytes(payload, echo)) {
      throw new Error('ping payload mismatch')
    }
    out(`PING ${rtt.toFixed(3)}`)
  }
  queue.end()
  await sinkDone
  stream.close()
}

/** Send `n` pattern bytes on the pipe protocol, half-close, verify the echo. */
async function doPipe (conn, n, signal) {
  const stream = await conn.newStream(PIPE_PROTOCOL, { signal })
  const expected = pattern(n)
  const received = new Uint8Array(n)
  let got = 0

  // Read concurrently with writing: the echo side would otherwise stall on
  // backpressure for large transfers.
  const reading = (async () => {
    for await (const chunk of stream.source) {
      const bytes = bytesOf(chunk)
      if (got + bytes.byteLength > n) {
        throw new Error(`echo longer than sent: ${got + bytes.byteLength} > ${n}`)
      }
      received.set(bytes, got)
      got += bytes.byteLength
    }
  })()

  const CHUNK = 16 * 1024
  // Ending the sink's source half-closes our write side (yamux FIN).
  await stream.sink((function * () {
    for (let off = 0; off < n; off += CHUNK) {
      yield expected.subarray(off, Math.min(off + CHUNK, n))
    }
  })())
  await reading
  if (got !== n) {
    throw new Error(`echo short: got ${got} of ${n} bytes`)
  }
  if (!equalBytes(expected, received)) {
    throw new Error('echo differs from sent data')
  }
  out(`ECHO OK ${n}`)
}

async function runDial (argv) {
  const { positional, flags } = parseArgs(argv, ['bytes', 'pings', 'wait-secs'])
  if (positional.length !== 1) {
    throw new UsageError('dial needs exactly one ADDR')
  }
  const bytes = flags.bytes != null ? parseCount('--bytes', flags.bytes) : 65536
  const pings = flags.pings != null ? parseCount('--pings', flags.pings) : 3
  // Extra (not in interop/js): idle this long between the pings and the echo,
  // to test how long a v1 circuit stays up.
  const waitSecs = flags['wait-secs'] != null ? parseCount('--wait-secs', flags['wait-secs']) : 0
  const target = multiaddr(positional[0])
  if (!target.toString().includes('/p2p-circuit/')) {
    throw new UsageError('dial ADDR must be <relay addr>/p2p/<R>/p2p-circuit/p2p/<peer>')
  }

  const timer = setTimeout(() => {
    out('ERROR timeout')
    exit(2)
  }, DIAL_TIMEOUT_MS)
  // Backstop only: the timer above must win so the exit code is 2.
  const controller = new AbortController()
  const backstop = setTimeout(() => controller.abort(), DIAL_TIMEOUT_MS + 5_000)
  backstop.unref()
  const signal = controller.signal

  const node = await createLibp2p(baseOptions())

  const conn = await node.dial(target, { signal })
  out(`CONNECTED ${conn.remotePeer}`)
  log(`connection ${conn.remoteAddr} local ${conn.stat?.direction}`)
  await doPings(conn, pings, signal)
  if (waitSecs > 0) {
    await new Promise(resolve => setTimeout(resolve, waitSecs * 1000))
  }
  await doPipe(conn, bytes, signal)

  clearTimeout(timer)
  const force = setTimeout(() => exit(0), 2000)
  force.unref()
  await node.stop().catch(err => log('stop failed', err))
  exit(0)
}

// ----------------------------------------------------------------- main ----

async function main () {
  const [mode, ...rest] = process.argv.slice(2)
  switch (mode) {
    case 'relay': return runRelay(rest)
    case 'listen': return runListen(rest)
    case 'dial': return runDial(rest)
    default:
      throw new UsageError(`unknown mode ${mode ?? '(none)'}; use relay | listen | dial`)
  }
}

/**
 * One-line message for an error. js-libp2p 0.42's dialer rejects with an
 * AggregateError ("All promises were rejected") whose useful text, e.g.
 * `HOP request failed with code "260"`, is in the inner errors.
 */
function errorMessage (err) {
  const inner = Array.isArray(err?.errors) && err.errors.length > 0
    ? err.errors.map(e => errorMessage(e)).join('; ')
    : String(err?.message ?? err)
  return inner.replace(/\s+/g, ' ')
}

main().catch((err) => {
  log(err)
  out(`ERROR ${errorMessage(err)}`)
  exit(1)
})

// In dial mode a failure inside a detached task must still end the run with
// ERROR; the long-running relay/listen peers only log such stray rejections.
process.on('unhandledRejection', (err) => {
  log('unhandled rejection', err)
  if (process.argv[2] === 'dial') {
    out(`ERROR ${errorMessage(err)}`)
    exit(1)
  }
})
