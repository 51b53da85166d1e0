// isol8: route Node's fetch and http(s) through the filtered network's proxy.
// Node 20 ignores HTTP_PROXY/HTTPS_PROXY, so the agent preloads this file (NODE_OPTIONS=--require)
// in filtered mode only. Hosts in NO_PROXY (localhost) are reached directly.
'use strict';
if (typeof Deno === 'undefined' && !process.versions.bun) {  // Deno and Bun honour the variables
const http = require('http');
const https = require('https');
const net = require('net');
const tls = require('tls');

const PROXY = { host: '127.0.0.1', port: 8118 };
const direct = (host) => (process.env.NO_PROXY || '').split(',').includes(host);

try {
  const { setGlobalDispatcher, Agent, Dispatcher, ProxyAgent } = require('/usr/local/lib/isol8-node/undici');
  const viaProxy = new ProxyAgent(`http://${PROXY.host}:${PROXY.port}`);
  const plain = new Agent();
  class Router extends Dispatcher {
    dispatch(options, handler) {
      return (direct(new URL(options.origin).hostname) ? plain : viaProxy).dispatch(options, handler);
    }
    close() { return Promise.all([viaProxy.close(), plain.close()]); }
    destroy() { return Promise.all([viaProxy.destroy(), plain.destroy()]); }
  }
  setGlobalDispatcher(new Router());
} catch (error) {
  process.emitWarning(`isol8: fetch is not routed through the proxy (${error.message})`);
}

class ProxiedHttpAgent extends http.Agent {
  // The proxy routes origin-form requests by their Host header.
  createConnection(options, callback) {
    if (direct(options.host)) return super.createConnection(options, callback);
    return net.connect(PROXY.port, PROXY.host);
  }
}

class ProxiedHttpsAgent extends https.Agent {
  createConnection(options, callback) {
    if (direct(options.host)) return super.createConnection(options, callback);
    const target = `${options.host}:${options.port || 443}`;
    const request = http.request({ ...PROXY, method: 'CONNECT', path: target, headers: { host: target }, agent: false });
    request.once('connect', (response, socket) => {
      if (response.statusCode !== 200) {
        socket.destroy();
        callback(new Error(`isol8 proxy refused ${target}: HTTP ${response.statusCode}`));
        return;
      }
      callback(null, tls.connect({ ...options, socket, servername: options.servername || options.host }));
    });
    request.once('error', callback);
    request.end();
  }
}

http.globalAgent = new ProxiedHttpAgent();
https.globalAgent = new ProxiedHttpsAgent();
}
