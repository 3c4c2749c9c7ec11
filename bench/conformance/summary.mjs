import fs from 'fs'
import tests from './node_modules/http-cache-tests/tests/index.mjs'
import surrogate from './node_modules/http-cache-tests/tests/surrogate-control.mjs'
tests.push(surrogate)
const results = JSON.parse(fs.readFileSync(process.argv[2]))
const byId = {}
for (const s of tests) for (const t of s.tests) byId[t.id] = t
const pass = ['pass', 'yes']
function classify (id) {
  const t = byId[id]; const r = results[id]
  if (r === undefined) return 'untested'
  if (t.depends_on) for (const d of t.depends_on) if (!pass.includes(classify(d))) return 'dependency_fail'
  if (r[0] === 'Setup') return r[1] === 'retry' ? 'retry' : 'setup_fail'
  if (r === false && r[0] !== 'Assertion') return 'harness_fail'
  if (t.kind === 'required' || t.kind === undefined) return r === true ? 'pass' : 'fail'
  if (t.kind === 'optimal') return r === true ? 'pass' : 'optional_fail'
  if (t.kind === 'check') return r === true ? 'yes' : 'no'
}
const counts = {}; const lists = {}
for (const id of Object.keys(byId)) { if (byId[id].browser_only) continue; const c = classify(id); counts[c] = (counts[c] || 0) + 1; (lists[c] = lists[c] || []).push(id) }
console.log(JSON.stringify(counts))
for (const k of ['fail', 'setup_fail', 'optional_fail']) if (lists[k]) console.log(k + ': ' + lists[k].join(' '))
