// js-libp2p interop test peer for the circuit project.
//
// Modes (see README.md for the full stdout contract):
//   relay  --listen ADDR [--listen ADDR]... [--max-circuit-bytes N] [--max-circuit-secs N] [--max-reservations N]
//   listen --relay ADDR
//   dial   ADDR [--bytes N] [--pings N]
//
// Events go to stdout, one per line; everything else (js-libp2p debug logs via
// DEBUG=libp2p:*, our own diagnostics) goes to stderr.

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

const PIPE_PROTOCOL = '/circuit/pipe/1.0.0'
const PING_PROTOCOL = '/ipfs/ping/1.0.0'
const PING_LENGTH = 32
// Whole-run bound for `dial`; the env override exists only so the timeout path
// itself can be exercised quickly (see README.md).
const DIAL_TIMEOUT_MS = Number.parseInt(process.env.JS_PEER_DIAL_TIMEOUT_MS ?? '', 10) > 0
  ? Number.parseInt(process.env.JS_PEER_DIAL_TIMEOUT_MS, 10)
  : 60_000
// Effectively "no limit" for the data limit when only a duration flag is
// given: the js relay cannot express "duration limit but no data limit" (it
// always sends both fields, and enforces data = 0 as "zero bytes allowed").
const HUGE_DATA_LIMIT = 1n << 40n
const DEFAULT_DURATION_SECS = 3600
const DEFAULT_MAX_RESERVATIONS = 100_000

// Only loopback peers are ever used by the tests; the allow list exempts them
// from js-libp2p's inbound connection rate limiting.
const LOOPBACK_ALLOW = ['/ip4/127.0.0.0/ipcidr/8', '/ip6/::1/ipcidr/128']

/** Print one event line on stdout. */
function out (line) {
  process.stdout.write(line + '\n')
}

/** Print a diagnostic on stderr. */
function log (...args) {
  console.error('[js-peer]', ...args)
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

/** Options shared by every mode. */
function baseOptions () {
  return {
    transports: [tcp(), webSockets()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionManager: {
      allow: LOOPBACK_ALLOW
    }
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

// ---------------------------------------------------------------- relay ----

async function runRelay (argv) {
  const { positional, flags } = parseArgs(
    argv,
    ['listen', 'max-circuit-bytes', 'max-circuit-secs', 'max-reservations'],
    ['listen']
  )
  if (positional.length > 0) {
    throw new UsageError(`unexpected argument ${positional[0]}`)
  }
  const listen = flags.listen ?? []
  if (listen.length === 0) {
    throw new UsageError('relay needs at least one --listen ADDR')
  }
  const maxBytes = flags['max-circuit-bytes'] != null ? parseCount('--max-circuit-bytes', flags['max-circuit-bytes']) : undefined
  const maxSecs = flags['max-circuit-secs'] != null ? parseCount('--max-circuit-secs', flags['max-circuit-secs']) : undefined
  const maxReservations = flags['max-reservations'] != null ? parseCount('--max-reservations', flags['max-reservations']) : DEFAULT_MAX_RESERVATIONS

  // Without limit flags the relay sends no Limit at all (an "unlimited relay",
  // which the spec allows), so relayed connections are not "limited". With
  // either flag it sends Limit{duration,data} (js always sets both fields).
  const reservations = { maxReservations, applyDefaultLimit: false }
  if (maxBytes != null || maxSecs != null) {
    reservations.applyDefaultLimit = true
    // js enforces the data limit per relayed connection with 0 meaning "no
    // bytes", so map 0/absent to a huge value instead.
    reservations.defaultDataLimit = maxBytes != null && maxBytes > 0 ? BigInt(maxBytes) : HUGE_DATA_LIMIT
    // js-libp2p quirk: the server enforces `duration` in *milliseconds* but
    // writes the same number into Limit.duration on the wire (spec: seconds).
    // We configure the enforced value correctly (N s = N*1000 ms); the wire
    // therefore carries N*1000. See README.md.
    reservations.defaultDurationLimit = (maxSecs != null && maxSecs > 0 ? maxSecs : DEFAULT_DURATION_SECS) * 1000
  }

  const node = await createLibp2p({
    ...baseOptions(),
    addresses: { listen },
    services: {
      identify: identify(),
      ping: ping(),
      relay: circuitRelayServer({ reservations })
    }
  })
  exitOnSignal(node)

  const peerId = node.peerId.toString()
  out(`PEER ${peerId}`)
  // The relay's own listen addresses (loopback) are what the address manager
  // reports; the relay server copies exactly these into Reservation.addrs.
  const addrs = node.getMultiaddrs().filter(ma => !ma.toString().includes('/p2p-circuit'))
  if (addrs.length === 0) {
    throw new Error('relay has no listen addresses')
  }
  for (const ma of addrs) {
    out(`LISTEN ${withPeer(ma.toString(), peerId)}`)
  }
  node.services.relay.addEventListener('relay:reservation', (evt) => {
    log(`reservation from ${evt.detail.addr}`)
  })
  out('READY')
}

/** Append /p2p/<peerId> unless the address already ends with it. */
function withPeer (addr, peerId) {
  return addr.endsWith(`/p2p/${peerId}`) ? addr : `${addr}/p2p/${peerId}`
}

// --------------------------------------------------------------- listen ----

/** Echo everything until the remote half-closes, then close and report. */
async function handlePipe (stream, connection) {
  let total = 0
  try {
    for await (const chunk of stream) {
      const bytes = chunk.subarray()
      total += bytes.byteLength
      if (!stream.send(bytes)) {
        await stream.onDrain()
      }
    }
    await stream.close()
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
  if (relayMa.getComponents().find(c => c.name === 'p2p') == null) {
    throw new UsageError('--relay ADDR must end with /p2p/<relay peer id>')
  }

  const node = await createLibp2p({
    ...baseOptions(),
    transports: [tcp(), webSockets(), circuitRelayTransport()],
    // Listening on <relay>/p2p-circuit makes the circuit transport dial the
    // relay and await the RESERVE exchange while the node starts.
    addresses: { listen: [relayMa.encapsulate('/p2p-circuit').toString()] },
    services: {
      identify: identify(),
      ping: ping()
    },
    // Start only after the handlers and event listeners are in place.
    start: false
  })
  exitOnSignal(node)

  const peerId = node.peerId.toString()
  out(`PEER ${peerId}`)

  node.addEventListener('connection:open', (evt) => {
    const conn = evt.detail
    if (conn.direction === 'inbound' && conn.remoteAddr.toString().includes('/p2p-circuit')) {
      out(`INBOUND ${conn.remotePeer}`)
    }
  })
  await node.handle(PIPE_PROTOCOL, handlePipe, { runOnLimitedConnection: true })

  // Once the reservation is accepted the transport confirms
  // <relay addr>/p2p-circuit as one of our own addresses.
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
  await node.start()
  await reserved
  log('own addresses:', node.getMultiaddrs().map(String).join(' '))
  out(`RESERVED ${relay}/p2p-circuit/p2p/${peerId}`)
}

// ----------------------------------------------------------------- dial ----

/** Pull-style reader over a stream's async iterator. */
class ByteReader {
  constructor (stream) {
    this.it = stream[Symbol.asyncIterator]()
    this.buf = new Uint8Array(0)
  }

  /** Read exactly `n` bytes or throw on EOF. */
  async readExact (n) {
    while (this.buf.byteLength < n) {
      const { done, value } = await this.it.next()
      if (done) {
        throw new Error(`stream ended after ${this.buf.byteLength}/${n} bytes`)
      }
      const chunk = value.subarray()
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

/** Ping `count` times over one /ipfs/ping/1.0.0 stream; returns RTTs in ms. */
async function doPings (conn, count, signal) {
  const stream = await conn.newStream(PING_PROTOCOL, { runOnLimitedConnection: true, signal })
  const reader = new ByteReader(stream)
  for (let i = 0; i < count; i++) {
    const payload = crypto.getRandomValues(new Uint8Array(PING_LENGTH))
    const start = performance.now()
    if (!stream.send(payload)) {
      await stream.onDrain({ signal })
    }
    const echo = await reader.readExact(PING_LENGTH)
    const rtt = performance.now() - start
    if (!equalBytes(payload, echo)) {
      throw new Error('ping payload mismatch')
    }
    out(`PING ${rtt.toFixed(3)}`)
  }
  await stream.close({ signal })
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

/** Send `n` pattern bytes on the pipe protocol, half-close, verify the echo. */
async function doPipe (conn, n, signal) {
  const stream = await conn.newStream(PIPE_PROTOCOL, { runOnLimitedConnection: true, signal })
  const expected = pattern(n)
  const received = new Uint8Array(n)
  let got = 0

  // Start reading before writing so the echo is drained concurrently (the
  // echo side would otherwise stall on backpressure for large transfers).
  const reading = (async () => {
    for await (const chunk of stream) {
      const bytes = chunk.subarray()
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
  await stream.close({ signal }) // half-close our write side
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
  const { positional, flags } = parseArgs(argv, ['bytes', 'pings'])
  if (positional.length !== 1) {
    throw new UsageError('dial needs exactly one ADDR')
  }
  const bytes = flags.bytes != null ? parseCount('--bytes', flags.bytes) : 65536
  const pings = flags.pings != null ? parseCount('--pings', flags.pings) : 3
  const target = multiaddr(positional[0])

  const timer = setTimeout(() => {
    out('ERROR timeout')
    exit(2)
  }, DIAL_TIMEOUT_MS)
  // Backstop only: the timer above must win so the exit code is 2.
  const signal = AbortSignal.timeout(DIAL_TIMEOUT_MS + 5_000)

  const node = await createLibp2p({
    ...baseOptions(),
    transports: [tcp(), webSockets(), circuitRelayTransport()],
    services: {
      identify: identify(),
      ping: ping()
    }
  })

  const conn = await node.dial(target, { signal })
  out(`CONNECTED ${conn.remotePeer}`)
  // conn.limits exposes getters (bytes left, seconds left) or is undefined for
  // an unlimited connection.
  log(`connection ${conn.remoteAddr} limits: ${conn.limits == null ? 'none' : `bytes=${conn.limits.bytes} seconds=${conn.limits.seconds}`}`)
  await doPings(conn, pings, signal)
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

main().catch((err) => {
  log(err)
  const msg = String(err?.message ?? err).replace(/\s+/g, ' ')
  out(`ERROR ${msg}`)
  exit(1)
})

// In dial mode a failure inside a detached task must still end the run with
// ERROR; the long-running relay/listen peers only log such stray rejections
// (js-libp2p background tasks may reject when a remote misbehaves, which is
// exactly what the Rust tests provoke) instead of dying.
process.on('unhandledRejection', (err) => {
  log('unhandled rejection', err)
  if (process.argv[2] === 'dial') {
    out(`ERROR ${String(err?.message ?? err).replace(/\s+/g, ' ')}`)
    exit(1)
  }
})
