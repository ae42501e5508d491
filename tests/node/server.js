// The seed article's Node.js WebSocket server (the `ws` package), echoing
// every message, plus the page a browser loads through sluice. Listens on
// 127.0.0.1 at the port given as argv[2] (0 = any) and prints "port N".
const http = require('http');
const WebSocket = require('ws');

const page = `<!doctype html>
<meta charset="utf-8">
<title>node backend</title>
<div id="log"></div>
<script>
const log = (line) => { document.getElementById('log').textContent += line + '\\n'; };
const ws = new WebSocket('wss://' + location.host + '/ws');
ws.onopen = () => { log('open'); ws.send('hello node'); };
ws.onmessage = (event) => { log('echo: ' + event.data); ws.close(1000); };
ws.onerror = () => { log('error'); };
ws.onclose = (event) => { log('close ' + event.code); };
</script>`;

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(page);
});
const wss = new WebSocket.Server({ server });
wss.on('connection', (ws) => {
  ws.on('message', (message, isBinary) => ws.send(message, { binary: isBinary }));
});
server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  console.log('port ' + server.address().port);
});
