// The demo page served by `circuit relay --web` (crates/cli/web/index.html).
//
// Bundled by interop/browser/build-demo.sh with esbuild into
// crates/cli/web/app.js, which is committed and embedded in the binary.
//
// What it does: read the relay's own addresses from /relay.json, connect to
// the relay over WebSocket with js-libp2p, reserve a slot (listen on
// <relay>/p2p-circuit), show the resulting /p2p-circuit address, and let a
// person ping or chat with any peer address. Chat is /circuit/pipe/1.0.0
// (raw bytes, shown here as lines of text); incoming pipe streams (for
// example `circuit dial <this page's address>`) open a chat too.

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { version as libp2pVersion } from 'libp2p/version'
import { readChunks } from './streams.js'

const PIPE_PROTOCOL = '/circuit/pipe/1.0.0'
const PING_PROTOCOL = '/ipfs/ping/1.0.0'
const PING_LENGTH = 32
const PING_COUNT = 5
const STEP_TIMEOUT_MS = 20_000
// A chat line longer than this is shown in pieces, so a peer sending bytes
// without newlines cannot make the page buffer without bound.
const MAX_LINE_CHARS = 4096
// Lines kept per chat and in the activity log (older ones are dropped).
const MAX_CHAT_LINES = 500
const MAX_LOG_LINES = 300
// Reconnect backoff after the relay connection is lost.
const RECONNECT_MIN_MS = 2_000
const RECONNECT_MAX_MS = 30_000

const $ = (id) => document.getElementById(id)

/** The libp2p node, once created. */
let node = null
/** The relay's multiaddr (with /p2p/<id>) this page reserves on. */
let relayMa = null
/** The relay's PeerId as a string. */
let relayId = null
let reconnectTimer = null
let reconnectDelay = RECONNECT_MIN_MS
let reconnecting = false
/** True while reconnectNow() restarts the node (its own disconnect is expected). */
let restarting = false

// ---------------------------------------------------------------- display --

function log (line) {
  const el = $('log')
  const time = new Date().toLocaleTimeString()
  el.textContent += `${time}  ${line}\n`
  const lines = el.textContent.split('\n')
  if (lines.length > MAX_LOG_LINES + 1) {
    el.textContent = lines.slice(-MAX_LOG_LINES - 1).join('\n')
  }
  el.scrollTop = el.scrollHeight
  console.log('[demo] ' + line)
}

/** Set a status line: state is 'ok', 'bad' or 'wait'. */
function status (id, state, text) {
  const li = $(id)
  li.className = state
  li.querySelector('.v').textContent = text
}

function showError (id, text) {
  const el = $(id)
  el.textContent = text ?? ''
  el.hidden = text == null
}

function shortId (peer) {
  const s = String(peer)
  return s.length > 16 ? `${s.slice(0, 8)}…${s.slice(-6)}` : s
}

/** Turn a libp2p error into a sentence a person can act on. */
function explain (err) {
  const name = err?.name ?? ''
  const msg = String(err?.message ?? err)
  if (/NO_RESERVATION/.test(msg)) {
    return 'the relay has no reservation for that peer: it is not listening through this relay (or its reservation ran out)'
  }
  if (/RESERVATION_REFUSED/.test(msg)) {
    return 'the relay refused the reservation (it may be full, or its access list does not allow this page)'
  }
  if (/RESOURCE_LIMIT_EXCEEDED/.test(msg)) {
    return 'the relay is at its limit of circuits or reservations; try again later'
  }
  if (/PERMISSION_DENIED/.test(msg)) {
    return 'the relay does not allow this connection (access list)'
  }
  if (/CONNECTION_FAILED/.test(msg)) {
    return 'the relay could not reach that peer'
  }
  if (name === 'UnsupportedProtocolError' || /protocol selection failed|not supported/i.test(msg)) {
    return 'the peer does not speak the protocol asked for (chat needs /circuit/pipe/1.0.0)'
  }
  if (name === 'TimeoutError' || name === 'AbortError' || /aborted|timed? ?out/i.test(msg)) {
    return `no answer within ${STEP_TIMEOUT_MS / 1000} s`
  }
  if (name === 'LimitedConnectionError') {
    return 'the relayed connection is limited and does not allow this protocol'
  }
  if (name === 'UnsupportedListenAddressesError' || /failed to be listened on/.test(msg)) {
    // Listening on <relay>/p2p-circuit failed: the relay did not answer.
    return 'the relay did not answer over WebSocket (is it running and reachable from this browser?)'
  }
  if (/WebSocket|ECONNREFUSED|Could not connect/i.test(msg)) {
    return `could not open the WebSocket connection (${msg})`
  }
  if (name === 'StreamResetError' || /reset/i.test(msg)) {
    return 'the peer or the relay closed the stream abruptly (a relay limit may have been reached)'
  }
  return msg
}

/** Parse what a person pasted; throws an error with a plain message. */
function parseAddr (text) {
  const s = text.trim()
  if (s === '') {
    throw new Error('paste a peer address first')
  }
  let ma
  try {
    ma = multiaddr(s)
  } catch {
    throw new Error('that is not a libp2p address; it should look like /ip4/…/tcp/…/ws/p2p/<relay>/p2p-circuit/p2p/<peer>')
  }
  const comps = ma.getComponents()
  if (comps.length === 0 || comps[comps.length - 1].name !== 'p2p') {
    throw new Error('the address must end with /p2p/<peer id>')
  }
  if (comps[comps.length - 1].value === node?.peerId.toString()) {
    throw new Error('that is this page\'s own address; open the page in another tab or browser to talk to yourself')
  }
  return ma
}

// ---------------------------------------------------------- relay address --

/** Host component names per address family, to compare with location.hostname. */
function hostOf (ma) {
  const c = ma.getComponents()[0]
  return c != null && ['ip4', 'ip6', 'dns', 'dns4', 'dns6'].includes(c.name) ? c.value : null
}

/**
 * Choose the relay address to connect to from /relay.json: a secure
 * WebSocket one (`/tls/ws` or `/wss`) when the page is https (browsers refuse
 * ws:// from https pages), else a plain `/ws` one; preferably one whose host
 * is the page's own host, else the first.
 */
function chooseRelayAddr (info, pageUrl) {
  const secure = pageUrl.protocol === 'https:'
  const pageHost = pageUrl.hostname.replace(/^\[|\]$/g, '')
  const candidates = []
  for (const a of info.addrs ?? []) {
    let ma
    try {
      ma = multiaddr(a)
    } catch {
      continue
    }
    const names = ma.getComponents().map(c => c.name)
    const isWss = names.includes('wss') || (names.includes('tls') && names.includes('ws'))
    const isWs = names.includes('ws') && !names.includes('tls')
    if (names.includes('p2p-circuit') || !names.includes('p2p')) {
      continue
    }
    if ((secure && isWss) || (!secure && isWs)) {
      candidates.push(ma)
    }
  }
  if (candidates.length === 0) {
    return null
  }
  return candidates.find(ma => hostOf(ma) === pageHost) ?? candidates[0]
}

async function findRelay () {
  // ?relay=<multiaddr> overrides (for a page hosted elsewhere, or development).
  const override = new URL(location.href).searchParams.get('relay')
  if (override != null) {
    return multiaddr(override)
  }
  let res
  try {
    res = await fetch('relay.json', { cache: 'no-store' })
  } catch (err) {
    throw new Error(`cannot fetch relay.json from the relay: ${err.message}`)
  }
  if (!res.ok) {
    throw new Error(`relay.json: HTTP ${res.status} (is this page served by \`circuit relay --web\`?)`)
  }
  const info = await res.json()
  const ma = chooseRelayAddr(info, new URL(location.href))
  if (ma == null) {
    if (location.protocol === 'https:') {
      throw new Error('this page is https, but the relay has no secure WebSocket (/tls/ws) address; browsers refuse plain ws:// from https pages. Start the relay with a /tls/ws listener, or open the page over http.')
    }
    throw new Error('the relay has no WebSocket (/ws) address in relay.json; start it with --listen …/ws')
  }
  return ma
}

// -------------------------------------------------------------- the node --

function ownCircuitAddrs () {
  return node.getMultiaddrs().map(String).filter(a => a.includes('/p2p-circuit'))
}

/** Show our /p2p-circuit addresses; the one via the relay address we use first. */
function showOwnAddrs () {
  const addrs = ownCircuitAddrs()
  const relayStr = relayMa.toString()
  const main = addrs.find(a => a.startsWith(relayStr + '/')) ?? addrs[0]
  const others = addrs.filter(a => a !== main)
  if (main == null) {
    $('own-addr').textContent = 'no relay address right now (waiting for the reservation)'
    $('copy').disabled = true
    $('others-box').hidden = true
    status('st-resv', reconnecting ? 'wait' : 'bad', reconnecting ? 'none while not connected to the relay' : 'none: the relay did not give this page an address')
    return
  }
  $('own-addr').textContent = main
  $('copy').disabled = false
  $('others').replaceChildren(...others.map(a => {
    const li = document.createElement('li')
    li.textContent = a
    return li
  }))
  $('others-box').hidden = others.length === 0
}

async function createNode () {
  node = await createLibp2p({
    transports: [webSockets(), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    // js-libp2p's browser default refuses ws:// and private addresses; this
    // page talks to whichever relay served it, which may be on a LAN or
    // loopback.
    connectionGater: { denyDialMultiaddr: () => false },
    addresses: { listen: [relayMa.encapsulate('/p2p-circuit').toString()] },
    services: { identify: identify(), ping: ping() },
    start: false
  })
  $('peer-id').textContent = node.peerId.toString()

  node.addEventListener('connection:open', (evt) => {
    const conn = evt.detail
    if (String(conn.remotePeer) === relayId) {
      status('st-conn', 'ok', `connected to the relay over ${conn.remoteAddr.toString().includes('/tls/') || conn.remoteAddr.toString().includes('/wss') ? 'secure WebSocket' : 'WebSocket'}`)
    } else if (conn.direction === 'inbound') {
      log(`${shortId(conn.remotePeer)} connected to you${conn.remoteAddr.toString().includes('/p2p-circuit') ? ' through the relay' : ''}`)
    }
  })
  node.addEventListener('peer:disconnect', (evt) => {
    if (String(evt.detail) === relayId && !restarting) {
      status('st-conn', 'bad', 'connection to the relay lost')
      status('st-resv', 'bad', 'lost with the connection')
      log('connection to the relay lost')
      scheduleReconnect()
    }
  })
  node.addEventListener('self:peer:update', () => {
    const addrs = ownCircuitAddrs()
    if (addrs.length > 0) {
      status('st-resv', 'ok', `reserved: this page is reachable through the relay (${addrs.length} address${addrs.length === 1 ? '' : 'es'})`)
    }
    showOwnAddrs()
  })
  await node.handle(PIPE_PROTOCOL, (stream, connection) => {
    openChat({ stream, connection, incoming: true })
  }, { runOnLimitedConnection: true })
}

/** Start the node and wait until the reservation gave us a circuit address. */
async function connect () {
  status('st-conn', 'wait', `connecting to ${relayMa} …`)
  status('st-resv', 'wait', 'reserving a slot…')
  showError('status-error', null)
  $('reconnect-row').hidden = true
  await node.start()
  const deadline = Date.now() + STEP_TIMEOUT_MS
  while (ownCircuitAddrs().length === 0) {
    if (Date.now() > deadline) {
      throw new Error(`no reservation within ${STEP_TIMEOUT_MS / 1000} s`)
    }
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  reconnectDelay = RECONNECT_MIN_MS
  reconnecting = false
  status('st-resv', 'ok', `reserved: this page is reachable through the relay (${ownCircuitAddrs().length} address${ownCircuitAddrs().length === 1 ? '' : 'es'})`)
  showOwnAddrs()
  log(`reserved a slot on the relay; your address is ${$('own-addr').textContent}`)
  $('ping').disabled = false
  $('chat').disabled = false
}

function scheduleReconnect () {
  if (reconnectTimer != null) {
    return
  }
  reconnecting = true
  const delay = reconnectDelay
  reconnectDelay = Math.min(reconnectDelay * 2, RECONNECT_MAX_MS)
  status('st-conn', 'bad', `not connected; trying again in ${Math.round(delay / 1000)} s`)
  $('reconnect-row').hidden = false
  reconnectTimer = setTimeout(reconnectNow, delay)
}

async function reconnectNow () {
  if (restarting) {
    return
  }
  clearTimeout(reconnectTimer)
  reconnectTimer = null
  restarting = true
  try {
    // Restarting the node listens on <relay>/p2p-circuit again (same PeerId),
    // which reserves anew.
    await node.stop()
    await connect()
  } catch (err) {
    log(`reconnect failed: ${explain(err)}`)
    showError('status-error', `Could not reconnect to the relay: ${explain(err)}`)
    scheduleReconnect()
  } finally {
    restarting = false
  }
}

// ------------------------------------------------------------------- ping --

async function doPing (ma) {
  const out = $('pings')
  const signal = AbortSignal.timeout(STEP_TIMEOUT_MS)
  out.textContent = `ping ${ma}\n`
  const conn = await node.dial(ma, { signal })
  out.textContent += `connected to ${shortId(conn.remotePeer)}${conn.limits != null ? ' (relayed, limited by the relay)' : ''}\n`
  const stream = await conn.newStream(PING_PROTOCOL, { runOnLimitedConnection: true, signal })
  const chunks = readChunks(stream)
  let buf = new Uint8Array(0)
  const rtts = []
  try {
    for (let i = 0; i < PING_COUNT; i++) {
      const payload = crypto.getRandomValues(new Uint8Array(PING_LENGTH))
      const t0 = performance.now()
      stream.send(payload)
      while (buf.byteLength < PING_LENGTH) {
        const { done, value } = await chunks.next()
        if (done) {
          throw new Error(`the peer closed the ping stream after ${i} answers`)
        }
        const next = new Uint8Array(buf.byteLength + value.byteLength)
        next.set(buf)
        next.set(value, buf.byteLength)
        buf = next
      }
      const rtt = performance.now() - t0
      const echo = buf.subarray(0, PING_LENGTH)
      buf = buf.subarray(PING_LENGTH)
      if (!echo.every((b, j) => b === payload[j])) {
        throw new Error('the peer answered with different bytes')
      }
      rtts.push(rtt)
      out.textContent += `pong ${i + 1}: ${rtt.toFixed(1)} ms\n`
      await new Promise(resolve => setTimeout(resolve, 300))
    }
  } finally {
    await stream.close().catch(() => stream.abort(new Error('closing')))
    await chunks.return?.()
  }
  const min = Math.min(...rtts)
  const max = Math.max(...rtts)
  const avg = rtts.reduce((a, b) => a + b, 0) / rtts.length
  out.textContent += `${rtts.length} pongs: min ${min.toFixed(1)} / avg ${avg.toFixed(1)} / max ${max.toFixed(1)} ms\n`
  log(`ping ${shortId(conn.remotePeer)}: avg ${avg.toFixed(1)} ms over ${rtts.length} pings`)
}

// ------------------------------------------------------------------- chat --

/** One chat panel over one /circuit/pipe/1.0.0 stream. */
function openChat ({ stream, connection, incoming }) {
  const peer = connection.remotePeer.toString()
  const box = document.createElement('div')
  box.className = 'chat'
  const header = document.createElement('header')
  const title = document.createElement('span')
  title.textContent = `${incoming ? 'Incoming chat from' : 'Chat with'} ${shortId(peer)}${connection.limits != null ? ' (relayed, limited by the relay)' : ''}`
  title.title = peer
  const end = document.createElement('button')
  end.type = 'button'
  end.textContent = 'End chat'
  header.append(title, end)
  const lines = document.createElement('div')
  lines.className = 'lines'
  const form = document.createElement('form')
  form.autocomplete = 'off'
  const input = document.createElement('input')
  input.type = 'text'
  input.placeholder = 'type a line and press Enter'
  const send = document.createElement('button')
  send.type = 'submit'
  send.textContent = 'Send'
  form.append(input, send)
  box.append(header, lines, form)
  $('chats').prepend(box)

  const add = (cls, text) => {
    const div = document.createElement('div')
    if (cls != null) {
      div.className = cls
    }
    div.textContent = text
    lines.append(div)
    while (lines.childElementCount > MAX_CHAT_LINES) {
      lines.firstElementChild.remove()
    }
    lines.scrollTop = lines.scrollHeight
  }
  let writable = true
  const closeWrite = async (why) => {
    if (!writable) {
      return
    }
    writable = false
    input.disabled = true
    send.disabled = true
    end.disabled = true
    add('note', why)
    await stream.close().catch(() => {})
  }
  add('note', incoming ? `${peer} opened a chat (${PIPE_PROTOCOL})` : `connected to ${peer}`)
  log(incoming ? `incoming chat from ${shortId(peer)}` : `chat with ${shortId(peer)} opened`)

  form.addEventListener('submit', async (evt) => {
    evt.preventDefault()
    if (!writable) {
      return
    }
    const text = input.value
    input.value = ''
    try {
      if (!stream.send(new TextEncoder().encode(text + '\n'))) {
        await stream.onDrain({ signal: AbortSignal.timeout(STEP_TIMEOUT_MS) })
      }
      add('me', `you: ${text}`)
    } catch (err) {
      add('note', `not sent: ${explain(err)}`)
    }
  })
  end.addEventListener('click', () => closeWrite('you ended the chat'))

  // Read lines until the peer half-closes.
  ;(async () => {
    const decoder = new TextDecoder()
    let pending = ''
    const emit = (line) => add(null, `${shortId(peer)}: ${line}`)
    try {
      for await (const bytes of readChunks(stream)) {
        pending += decoder.decode(bytes, { stream: true })
        let nl
        while ((nl = pending.indexOf('\n')) >= 0) {
          emit(pending.slice(0, nl).replace(/\r$/, ''))
          pending = pending.slice(nl + 1)
        }
        while (pending.length > MAX_LINE_CHARS) {
          emit(pending.slice(0, MAX_LINE_CHARS))
          pending = pending.slice(MAX_LINE_CHARS)
        }
      }
      pending += decoder.decode()
      if (pending !== '') {
        emit(pending)
      }
      add('note', writable ? 'the peer finished sending; you can still reply, then End chat' : 'the peer closed the chat')
      if (!writable) {
        end.disabled = true
      }
    } catch (err) {
      add('note', `chat broken: ${explain(err)}`)
      writable = false
      input.disabled = true
      send.disabled = true
      end.disabled = true
    }
  })()
  if (!incoming) {
    input.focus()
  }
}

async function doChat (ma) {
  const signal = AbortSignal.timeout(STEP_TIMEOUT_MS)
  const conn = await node.dial(ma, { signal })
  const stream = await conn.newStream(PIPE_PROTOCOL, { runOnLimitedConnection: true, signal })
  openChat({ stream, connection: conn, incoming: false })
}

// ------------------------------------------------------------------- main --

function wireUi () {
  $('copy').addEventListener('click', async () => {
    const text = $('own-addr').textContent
    try {
      await navigator.clipboard.writeText(text)
      $('copy').textContent = 'Copied'
    } catch {
      // Clipboard access needs a secure context (https or localhost); select instead.
      const range = document.createRange()
      range.selectNodeContents($('own-addr'))
      getSelection().removeAllRanges()
      getSelection().addRange(range)
      $('copy').textContent = 'Selected: press Ctrl+C'
    }
    setTimeout(() => { $('copy').textContent = 'Copy' }, 2000)
  })
  $('reconnect').addEventListener('click', () => reconnectNow())
  const run = async (what, fn) => {
    showError('reach-error', null)
    let ma
    try {
      ma = parseAddr($('peer-addr').value)
    } catch (err) {
      showError('reach-error', err.message)
      return
    }
    $('ping').disabled = true
    $('chat').disabled = true
    try {
      await fn(ma)
    } catch (err) {
      const text = `${what} failed: ${explain(err)}`
      showError('reach-error', text)
      log(text)
    } finally {
      $('ping').disabled = false
      $('chat').disabled = false
    }
  }
  $('peer-form').addEventListener('submit', (evt) => {
    evt.preventDefault()
    run('Ping', doPing)
  })
  $('chat').addEventListener('click', () => run('Chat', doChat))
}

async function main () {
  $('versions').textContent = `js-libp2p ${libp2pVersion}`
  wireUi()
  try {
    relayMa = await findRelay()
    const p2p = relayMa.getComponents().findLast(c => c.name === 'p2p')
    if (p2p == null) {
      throw new Error(`the relay address has no /p2p/<id>: ${relayMa}`)
    }
    relayId = p2p.value
    status('st-relay', 'ok', relayMa.toString())
  } catch (err) {
    status('st-relay', 'bad', 'unknown')
    showError('status-error', err.message)
    log(err.message)
    return
  }
  try {
    await createNode()
    await connect()
  } catch (err) {
    status('st-conn', 'bad', 'not connected')
    status('st-resv', 'bad', 'none')
    showError('status-error', `Could not connect to the relay: ${explain(err)}`)
    log(`could not connect to the relay: ${explain(err)}`)
    if (node != null) {
      scheduleReconnect()
    }
  }
}

main()
