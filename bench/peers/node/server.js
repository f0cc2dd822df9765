// The node-coap peer of bench/loadtest.py, written as the thesis' collector used npm
// `coap`: POST /events parses the JSON body and answers 2.01 (4.00 when it is not
// JSON); GET /health answers 2.05. Usage: node server.js --host H --port P; prints
// "ready" when serving and exits on SIGTERM.
'use strict'
const coap = require('coap')

function arg (name, dflt) {
  const i = process.argv.indexOf(name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt
}

const host = arg('--host', '127.0.0.1')
const port = parseInt(arg('--port', '5683'), 10)
const server = coap.createServer({ type: host.includes(':') ? 'udp6' : 'udp4' })

server.on('request', (req, res) => {
  const path = req.url.split('?')[0]
  if (path === '/events' && req.method === 'POST') {
    try {
      JSON.parse(req.payload.toString('utf8'))
    } catch (e) {
      res.code = '4.00'
      res.end('bad json')
      return
    }
    res.code = '2.01'
    res.end()
  } else if (path === '/health' && req.method === 'GET') {
    res.code = '2.05'
    res.end('{"status":"ok"}')
  } else {
    res.code = '4.04'
    res.end()
  }
})

server.listen(port, host, () => {
  process.stdout.write('ready\n')
})

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0))
    setTimeout(() => process.exit(0), 500).unref()
  })
}
