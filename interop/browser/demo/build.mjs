// Bundle the relay's demo page (demo/demo.js) with esbuild into
// crates/cli/web/app.js, or with --check compare a fresh bundle with the
// committed one. Run through ../build-demo.sh (Node 22 from node_modules).
//
// The output depends only on the sources and the exact package versions in
// package-lock.json: esbuild is deterministic, and the build runs with a
// fixed working directory so no absolute path ends up in the bundle.

import { createHash } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const here = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const out = resolve(here, '../../crates/cli/web/app.js')
// The bundle is committed and embedded in the binary; keep it small.
const MAX_BYTES = 1_500_000

const sha = (b) => createHash('sha256').update(b).digest('hex').slice(0, 16)

async function build () {
  const res = await esbuild.build({
    absWorkingDir: here,
    entryPoints: ['demo/demo.js'],
    bundle: true,
    write: false,
    outfile: out,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    minify: true,
    legalComments: 'eof',
    logLevel: 'warning',
    banner: { js: '/* circuit relay demo page: built by interop/browser/build-demo.sh from interop/browser/demo/ (do not edit) */' }
  })
  return Buffer.from(res.outputFiles[0].contents)
}

const args = process.argv.slice(2)
if (args.some(a => a !== '--check')) {
  console.error('usage: build-demo.sh [--check]')
  process.exit(2)
}
const fresh = await build()
if (fresh.length > MAX_BYTES) {
  console.error(`bundle is ${fresh.length} bytes, over the ${MAX_BYTES} byte budget`)
  process.exit(1)
}
if (args.includes('--check')) {
  let committed
  try {
    committed = await readFile(out)
  } catch (err) {
    console.error(`DIFFERS: cannot read the committed bundle ${out}: ${err.message}`)
    process.exit(1)
  }
  if (committed.equals(fresh)) {
    console.log(`OK: ${out} matches a fresh build (${fresh.length} bytes, sha256 ${sha(fresh)})`)
    process.exit(0)
  }
  let at = 0
  while (at < committed.length && at < fresh.length && committed[at] === fresh[at]) {
    at++
  }
  const around = (b) => JSON.stringify(b.subarray(Math.max(0, at - 40), at + 40).toString('latin1'))
  console.error(`DIFFERS: ${out} does not match a fresh build of interop/browser/demo/
  committed: ${committed.length} bytes, sha256 ${sha(committed)}
  fresh:     ${fresh.length} bytes, sha256 ${sha(fresh)}
  first difference at byte ${at}:
    committed ${around(committed)}
    fresh     ${around(fresh)}
Rebuild with interop/browser/build-demo.sh and commit crates/cli/web/app.js
(or run npm ci in interop/browser if node_modules does not match package-lock.json).`)
  process.exit(1)
}
await writeFile(out, fresh)
console.log(`wrote ${out} (${fresh.length} bytes, sha256 ${sha(fresh)})`)
