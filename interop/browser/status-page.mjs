// Headless Chromium check of the relay's status page (`circuit relay --metrics ADDR`,
// page at http://ADDR/): the page shows the relay's PeerId in its HTML, and its live
// counts change when the test makes a reservation.
//
//   status-page.mjs --url http://127.0.0.1:PORT/ --peer-id ID [--artifacts DIR] [--chromium PATH]
//
// Prints `READY reservations=<n>` once loaded; the test then reserves on the relay;
// prints `CHANGED reservations=<n>` and exits 0 when the page's count went up (within
// 30 s), else `FAIL <why>` and exits 1.

import { mkdtemp, mkdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import puppeteer from 'puppeteer-core'

const here = dirname(fileURLToPath(import.meta.url))
const args = process.argv.slice(2)
const arg = (name, dflt) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : dflt
}
const url = arg('--url')
const peerId = arg('--peer-id')
const artifacts = resolve(arg('--artifacts', join(here, '../../test-artifacts')))
const chromium = arg('--chromium', process.env.CHROMIUM || '/usr/bin/chromium')

function fail (why) {
  console.log(`FAIL ${why}`)
  process.exit(1)
}

if (!url || !peerId) fail('usage: --url URL --peer-id ID')
setTimeout(() => fail('timed out'), 60_000).unref()

const profile = await mkdtemp(join(tmpdir(), 'circuit-status-'))
const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', `--user-data-dir=${profile}`]
})
try {
  const page = await browser.newPage()
  // No JavaScript needed for the identity: check the served HTML itself first.
  const resp = await page.goto(url, { waitUntil: 'load' })
  const html = await resp.text()
  if (!html.includes(peerId)) fail('the served HTML does not contain the PeerId')
  const shown = await page.$eval('#peer-id', el => el.textContent.trim())
  if (shown !== peerId) fail(`page shows PeerId ${shown}, expected ${peerId}`)
  const count = () => page.$eval('#count-reservations', el => Number(el.textContent.trim()))
  const before = await count()
  console.log(`READY reservations=${before}`)
  const deadline = Date.now() + 30_000
  let now = before
  while (Date.now() < deadline) {
    now = await count()
    if (now > before) break
    await new Promise(resolve => setTimeout(resolve, 250))
  }
  if (!(now > before)) fail(`the reservations count stayed at ${now}`)
  await mkdir(artifacts, { recursive: true })
  await page.screenshot({ path: join(artifacts, 'status-page.png'), fullPage: true })
  console.log(`CHANGED reservations=${now}`)
} finally {
  await browser.close()
  await rm(profile, { recursive: true, force: true })
}
