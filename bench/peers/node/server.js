// The node-coap peer of bench/loadtest.py, written as the thesis' collector used npm
// `coap`: POST /events parses the JSON body and answers 2.01 (4.00 when it is not
// JSON); GET /health answers 2.05. Usage: node server.js --host H --port P
// [--rcvbuf BYTES]; prints "ready" when serving and exits on SIGTERM.
//
// node-coap's createServer has no socket-buffer option, but its listen() takes a
// socket of our own (README: "A custom socket object can be passed as a port"), so the
// peer opens a dgram socket with recvBufferSize (the 4 MiB the collector asks for;
// the kernel default, ~208 KiB, drops bursts) and hands it over.
'use strict'
const coap = require('coap')
const dgram = require('dgram')

function arg (name, dflt) {
  const i = process.argv.indexOf(name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt
}

const host = arg('--host', '127.0.0.1')
const port = parseInt(arg('--port', '5683'), 10)
const rcvbuf = parseInt(arg('--rcvbuf', String(4 << 20)), 10)
const type = host.includes(':') ? 'udp6' : 'udp4'
const server = coap.createServer({ type })

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

const sock = dgram.createSocket({ type, recvBufferSize: rcvbuf })
sock.on('error', (err) => {
  process.stderr.write(`node-coap: cannot serve on ${host}:${port}: ${err.message}\n`)
  process.exit(1)
})
sock.bind(port, host, () => {
  process.stderr.write(`node-coap: udp receive buffer ${sock.getRecvBufferSize()}\n`)
  server.listen(sock, () => {
    process.stdout.write('ready\n')
  })
})

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0))
    setTimeout(() => process.exit(0), 500).unref()
  })
}
